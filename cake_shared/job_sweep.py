"""The sweeper's side of the job state machine: recovering running jobs whose worker stopped
answering and queued jobs whose broker message was lost.

Split from :mod:`cake_shared.jobs` (the transitions a worker makes on the job it holds) because
these run over every job, from the sweeper, and share nothing with a worker's claim but the
building blocks in :mod:`cake_shared.job_events`; ``cake_shared.jobs`` re-exports the names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update

from cake_shared.job_events import add_event, enqueue_after_commit, webhook_due
from cake_shared.models import Job, utcnow
from cake_shared.queue_names import queue_or_fallback
from cake_shared.status import JobPhase, JobStatus

if TYPE_CHECKING:
    from cake_shared.services import Services

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    requeued: list[str]
    failed: list[str]
    canceled: list[str]


def requeue_stale_jobs(
    services: Services,
    *,
    is_dead_claim: Callable[[str], bool] | None = None,
    enqueue: Callable[[str, str], None] | None = None,
) -> SweepResult:
    """Give back running jobs whose worker stopped answering.

    A running job whose heartbeat is older than ``job_heartbeat_timeout_s`` (or whose
    ``claimed_by`` the optional ``is_dead_claim`` recognises as a dead process) goes back to
    ``queued`` and is enqueued again, unless it has used ``job_max_attempts`` attempts: then it
    fails with ``max_attempts``; a job with a pending cancel ends ``canceled``. Each change is a
    compare-and-set on the claim token, so sweepers in several workers can run at once.
    """
    settings = services.settings
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.job_heartbeat_timeout_s)
    outcome = SweepResult([], [], [])
    with services.session_scope() as session:
        rows = session.execute(
            select(
                Job.id,
                Job.claim_token,
                Job.claimed_by,
                Job.heartbeat_at,
                Job.attempts,
                Job.cancel_requested,
                Job.queue,
            ).where(Job.status == JobStatus.RUNNING)
        ).all()
    for row in rows:
        stale = row.heartbeat_at is None or row.heartbeat_at < cutoff
        dead = bool(row.claimed_by) and is_dead_claim is not None and is_dead_claim(row.claimed_by)
        if not (stale or dead):
            continue
        guard = [Job.id == row.id, Job.status == JobStatus.RUNNING]
        guard.append(
            Job.claim_token == row.claim_token
            if row.claim_token is not None
            else Job.claim_token.is_(None)
        )
        if not dead:
            guard.append(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
        why = "its worker process died" if dead else "its worker stopped sending heartbeats"
        kind: str  # the event: the final status, or requeued
        with services.session_scope() as session:
            if row.cancel_requested:
                values: dict[str, Any] = {"status": JobStatus.CANCELED, "phase": JobPhase.CANCELED}
                kind, message, level = JobStatus.CANCELED, f"job canceled ({why})", "info"
            elif row.attempts >= settings.job_max_attempts:
                values = {
                    "status": JobStatus.FAILED,
                    "phase": JobPhase.FAILED,
                    "error": {
                        "code": "max_attempts",
                        "message": f"the job was interrupted {row.attempts} times ({why}); "
                        f"giving up after {settings.job_max_attempts} attempts",
                    },
                }
                kind, message, level = JobStatus.FAILED, values["error"]["message"], "error"
            else:
                values = {
                    "status": JobStatus.QUEUED,
                    "phase": JobPhase.QUEUED,
                    "heartbeat_at": None,
                }
                kind = "requeued"
                message = f"job requeued because {why} (attempt {row.attempts} of "
                message += f"{settings.job_max_attempts})"
                level = "warning"
            if kind != "requeued":
                values["finished_at"] = now
                values.update(webhook_due(now))
            values.update(claim_token=None, claimed_by=None)
            result = session.execute(
                update(Job)
                .where(*guard)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:
                session.rollback()
                continue
            add_event(session, row.id, kind, message, level=level, data={"reason": why})
        if kind == "requeued":
            outcome.requeued.append(row.id)
            enqueue_after_commit(services, row.id, row.queue, enqueue)
        elif kind == JobStatus.FAILED:
            outcome.failed.append(row.id)
        else:
            outcome.canceled.append(row.id)
    return outcome


def requeue_lost_queued_jobs(
    services: Services,
    older_than_s: float,
    *,
    depth: Callable[[str], int] | None = None,
    enqueue: Callable[[str, str], None] | None = None,
) -> list[str]:
    """Publish again queued jobs the broker may have lost (a publish that failed, a message file
    lost with a crashed worker); :func:`cake_shared.jobs.claim_job` makes the duplicates harmless.

    Only jobs queued for longer than ``older_than_s`` qualify, and only as many of them (oldest
    first) as the queue's broker depth (``depth(queue)``, default
    ``services.queue.depth``) falls short of the number of queued jobs, so jobs
    simply waiting behind a long one are not published again and again.
    """
    if depth is None:
        depth = services.queue.depth
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with services.session_scope() as session:
        rows = session.execute(
            select(Job.id, Job.queue, Job.updated_at)
            .where(Job.status == JobStatus.QUEUED)
            .order_by(Job.created_at)
        ).all()
    total: dict[str, int] = {}
    old: dict[str, list[str]] = {}
    for row in rows:
        queue = queue_or_fallback(row.queue)
        total[queue] = total.get(queue, 0) + 1
        if row.updated_at < cutoff:
            old.setdefault(queue, []).append(row.id)
    published: list[str] = []
    for queue, ids in old.items():
        try:
            waiting = depth(queue)
        except Exception as exc:  # broker down: try again next sweep
            log.warning("cannot read the depth of queue %s: %s", queue, exc)
            continue
        # Every queued job should have a message waiting; the shortfall is what was lost.
        deficit = min(len(ids), total[queue] - waiting)
        if deficit <= 0:
            continue
        # Messages are consumed in order, so the oldest jobs still queued are the likeliest to
        # have lost theirs; the next sweep takes the next ones if the shortfall remains.
        for job_id in ids[:deficit]:
            with services.session_scope() as session:
                # Touch updated_at so that the next sweep waits ``older_than_s`` again.
                result = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                    .values(updated_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount != 1:
                    continue
            enqueue_after_commit(services, job_id, queue, enqueue)
            published.append(job_id)
    return published
