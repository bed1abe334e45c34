"""The sweeper: a thread in every worker that repairs what crashes leave behind.

- Running jobs whose heartbeat is older than ``job_heartbeat_timeout_s`` (or whose claiming
  process on this host is gone) go back to the queue, or fail with ``max_attempts``.
- Queued jobs that the broker may have lost (a publish that failed while the broker was down, a
  message consumed by a worker that died before acknowledging it) are published again.
- The filesystem broker's processed message files are pruned.
- Objects nothing will read again are deleted from the store, a page at a time
  (:mod:`cake_shared.store_sweep`): checkpoints of ended jobs, files of deleted jobs, uploads no
  row refers to after a grace period.

Every change is a compare-and-set in the database, so sweepers in several workers can run at the
same time; duplicate messages are harmless because a job is claimed before it runs.
"""

from __future__ import annotations

import logging
import time

from cake_shared import jobs
from cake_shared.background import BackgroundLoop
from cake_shared.queue import filesystem_folders
from cake_shared.services import Services
from cake_shared.settings import Settings
from cake_shared.store_sweep import StoreSweeper
from worker.runner import claim_is_dead

log = logging.getLogger("cake.worker.sweeper")

#: Processed message files of the filesystem broker older than this are deleted (seconds).
PROCESSED_MESSAGE_TTL_S = 3600.0


def prune_processed_messages(settings: Settings, max_age_s: float = PROCESSED_MESSAGE_TTL_S) -> int:
    """Delete the filesystem broker's processed message files older than ``max_age_s``."""
    if not settings.resolved_broker_url().startswith("filesystem"):
        return 0
    folder = filesystem_folders(settings)["processed"]
    cutoff = time.time() - max_age_s
    removed = 0
    for path in folder.glob("*.msg") if folder.is_dir() else ():
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def sweep_once(
    services: Services,
    lost_after_s: float | None = None,
    store_sweeper: StoreSweeper | None = None,
) -> jobs.SweepResult:
    """One pass; returns what changed (requeued ids include lost queued jobs re-published).

    ``lost_after_s`` (default ``lost_job_after_s``): how long a job may sit queued before the
    sweeper checks that the broker still has it. ``store_sweeper``: when given, a round of the
    object store's orphans comes last; its failure (the store is down) is only logged, after
    the jobs were taken care of.
    """
    result = jobs.requeue_stale_jobs(services, is_dead_claim=claim_is_dead)
    for job_id in result.requeued:
        log.warning("job %s: worker gone; requeued", job_id)
    for job_id in result.failed:
        log.warning("job %s: failed after too many attempts", job_id)
    lost = jobs.requeue_lost_queued_jobs(
        services, services.settings.lost_job_after_s if lost_after_s is None else lost_after_s
    )
    for job_id in lost:
        log.info("job %s: queued but not in the broker; published again", job_id)
    result.requeued.extend(lost)
    prune_processed_messages(services.settings)
    if store_sweeper is not None:
        try:
            store_sweeper.sweep()
        except Exception as exc:  # one try per store call: an outage ends the round, no more
            log.warning("store sweep stopped (%s: %s); it goes on next round",
                        type(exc).__name__, exc)  # fmt: skip
    return result


class Sweeper(BackgroundLoop):
    """Runs :func:`sweep_once` now and then every ``interval_s`` (default
    ``sweep_interval_s``) on a daemon thread."""

    thread_name = "cake-sweeper"

    def __init__(self, services: Services, interval_s: float | None = None) -> None:
        super().__init__()
        self.services = services
        self.interval_s = interval_s
        #: Keeps its place in the store between rounds.
        self.store_sweeper = StoreSweeper(services)

    def _run(self) -> None:
        interval = self.interval_s or self.services.settings.sweep_interval_s
        while True:
            try:
                sweep_once(self.services, store_sweeper=self.store_sweeper)
            except Exception as exc:  # the database or broker may be down; try again later
                reason = getattr(exc, "orig", None) or exc
                log.warning("sweep failed (%s: %s); retrying in %.0f s",
                            type(exc).__name__, reason, interval)  # fmt: skip
            if self._stop.wait(interval):
                return
