"""Worker heartbeats: who serves which queue on which device, and jobs that nobody serves.

Every worker process records itself in the ``workers`` table (its name, host, pid, the queues
it consumes and its device) every ``worker_heartbeat_s`` seconds from a thread of its main
process, and deletes its row when it stops cleanly. A row whose heartbeat is older than
``worker_live_s`` belongs to a worker that died without saying so; it no longer counts.

The API reads the rows for ``/readyz`` and ``/metrics`` (live workers per queue), to route
``default_queue = "auto"`` (``gpu`` while a live CUDA worker serves it, else ``cpu``) and, in a
watcher thread, to give a job that stays queued while no live worker serves its queue a
``no_worker`` event (:func:`flag_unserved_jobs`), so that nobody waits for nobody unawares.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from cake_shared.background import BackgroundLoop
from cake_shared.models import Job, JobEvent, Worker, utcnow
from cake_shared.queue_names import AUTO, CPU, GPU, QUEUES
from cake_shared.settings import Settings
from cake_shared.status import JobStatus

if TYPE_CHECKING:
    from cake_shared.services import Services

log = logging.getLogger("cake.workers")

NO_WORKER = "no_worker"
#: Events after which a queued job may be reported as unserved again.
_RESET_EVENTS = (JobStatus.QUEUED, "requeued", "started")


# -- the worker's side ------------------------------------------------------------------------
def detect_device(requested: str | None = None) -> str:
    """``"cuda"`` or ``"cpu"``: ``requested`` (``CAKE_WORKER_DEVICE``) when given, else CUDA
    when torch sees a device. The check goes through NVML, so it does not initialise CUDA in a
    process that forks its pool children afterwards."""
    wanted = (requested or "").strip().lower()
    if wanted and wanted != "auto":
        return "cuda" if wanted.startswith("cuda") else "cpu"
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    try:
        import torch
    except ImportError:  # pragma: no cover - the worker always has torch
        return "cpu"
    try:
        return "cuda" if torch.cuda.is_available() else "cpu"
    except Exception:  # pragma: no cover - a broken driver counts as no GPU
        return "cpu"


def _explicit(requested: str | None) -> bool:
    return bool((requested or "").strip()) and (requested or "").strip().lower() != "auto"


def quick_device(requested: str | None = None) -> str:
    """A first guess of :func:`detect_device` without importing torch (seconds on a busy
    machine): an explicit setting, else ``cuda`` when the NVIDIA driver lists a GPU that
    ``CUDA_VISIBLE_DEVICES`` does not hide. The heartbeat corrects it once torch answered."""
    if _explicit(requested):
        return detect_device(requested)
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return "cpu"
    try:
        return "cuda" if any(os.scandir("/proc/driver/nvidia/gpus")) else "cpu"
    except OSError:
        return "cpu"


def worker_name(pid: int | None = None, host: str | None = None) -> str:
    """The name ``cake worker`` gives its Celery node: ``cake-<pid>@<host>``."""
    return f"cake-{pid or os.getpid()}@{host or socket.gethostname()}"


def record_heartbeat(
    session: Session,
    worker_id: str,
    *,
    queues: Sequence[str],
    device: str,
    concurrency: int = 1,
    hostname: str | None = None,
    pid: int | None = None,
    version: str | None = None,
    now: datetime | None = None,
) -> None:
    """Insert or refresh the worker's row (in the caller's transaction)."""
    now = now or utcnow()
    row = session.get(Worker, worker_id)
    if row is None:
        session.add(
            Worker(
                id=worker_id,
                hostname=(hostname or socket.gethostname())[:255],
                pid=pid or os.getpid(),
                queues=list(queues),
                device=device,
                concurrency=concurrency,
                version=version,
                started_at=now,
                heartbeat_at=now,
            )
        )
        return
    row.queues = list(queues)
    row.device = device
    row.concurrency = concurrency
    row.heartbeat_at = now


def remove_worker(session: Session, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def _version() -> str | None:
    try:
        from cake_core import __version__
    except Exception:  # pragma: no cover
        return None
    return str(__version__)[:32]


@dataclass
class Heartbeat:
    """A daemon thread that records this worker every ``interval_s`` (default
    ``worker_heartbeat_s``) in the database of ``services`` and removes it at stop.

    ``device`` None is found in the thread: the first beat goes out at once with
    :func:`quick_device`, the next ones with what torch says (:func:`detect_device`), so the
    worker counts as live from its first second, not only once torch is imported. A database
    that cannot be reached is logged once per outage, not on every beat.
    """

    services: Services
    worker_id: str
    queues: Sequence[str]
    concurrency: int = 1
    device: str | None = None
    interval_s: float | None = None
    beats: int = 0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _remove: bool = field(default=True, repr=False)
    _refine: bool = field(default=False, repr=False)

    def beat(self) -> None:
        if self.device is None:
            requested = self.services.settings.worker_device
            self.device = quick_device(requested)
            self._refine = not _explicit(requested)
        with self.services.session_scope() as session:
            record_heartbeat(
                session,
                self.worker_id,
                queues=self.queues,
                device=self.device,
                concurrency=self.concurrency,
                version=_version(),
            )
        self.beats += 1

    def _run(self) -> None:
        interval = self.interval_s or self.services.settings.worker_heartbeat_s
        failing = False
        while not self._stop.is_set():
            try:
                self.beat()
                if failing:
                    log.info("worker heartbeat recorded again")
                failing = False
            except Exception as exc:
                if not failing:
                    reason = getattr(exc, "orig", None) or exc
                    log.warning(
                        "worker heartbeat could not be recorded (%s: %s); retrying quietly",
                        type(exc).__name__,
                        str(reason).strip().splitlines()[0] if str(reason).strip() else "",
                    )
                failing = True
            if self._refine and not self._stop.is_set():
                self._refine = False
                self.device = detect_device(self.services.settings.worker_device)  # torch
                continue  # record what torch says at once
            self._stop.wait(interval)
        if self._remove:  # after the last beat, so nothing records it again
            self._remove_row()

    def _remove_row(self) -> None:
        try:
            with self.services.session_scope() as session:
                remove_worker(session, self.worker_id)
        except Exception as exc:  # it goes stale after worker_live_s anyway
            log.warning("could not remove worker %s: %s", self.worker_id, type(exc).__name__)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Heartbeat:
        if not self.running:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cake-heartbeat", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0, remove: bool = True, wait: bool = True) -> None:
        """Stop beating and, with ``remove``, delete the row (the worker is gone at once).

        The thread itself deletes the row after its last beat; ``wait=False`` only tells it to
        (no database work and no waiting here: safe in a signal handler).
        """
        self._remove = remove
        self._stop.set()
        if not wait:
            return
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return
            self._thread = None
        elif remove:
            self._remove_row()


# -- the API's side ---------------------------------------------------------------------------
def live_workers(session: Session, settings: Settings, now: datetime | None = None) -> list[Worker]:
    """Workers whose last heartbeat is at most ``worker_live_s`` old, oldest first."""
    cutoff = (now or utcnow()) - timedelta(seconds=settings.worker_live_s)
    return list(
        session.scalars(
            select(Worker).where(Worker.heartbeat_at >= cutoff).order_by(Worker.started_at)
        )
    )


def workers_per_queue(workers: Iterable[Worker]) -> dict[str, int]:
    counts = dict.fromkeys(QUEUES, 0)
    for worker in workers:
        for queue in set(worker.queues or ()):
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def pick_queue(configured: str, workers: Iterable[Worker]) -> str:
    """``gpu``/``cpu`` as configured; ``auto``: ``gpu`` when a live CUDA worker serves it.

    Anything else is a bug of the caller (``Settings`` refuses other names at start-up), so it
    raises instead of quietly meaning ``cpu``.
    """
    if configured in QUEUES:
        return configured
    if configured != AUTO:
        raise ValueError(f"unknown queue {configured!r}; expected {AUTO} or one of {QUEUES}")
    gpu = any(w.device == "cuda" and GPU in (w.queues or ()) for w in workers)
    return GPU if gpu else CPU


def route_queue(session: Session, settings: Settings) -> str:
    """The queue a new job goes to (``default_queue``, resolving ``auto`` from heartbeats)."""
    if settings.default_queue in QUEUES:
        return settings.default_queue
    return pick_queue(settings.default_queue, live_workers(session, settings))


def report(session: Session, settings: Settings) -> dict[str, Any]:
    """What ``/readyz`` says about workers: live ones per queue, and the queues that are
    *missing* one: queues that hold queued jobs, or that new jobs go to, with no live worker."""
    workers = live_workers(session, settings)
    per_queue = workers_per_queue(workers)
    waiting = dict(
        session.execute(
            select(Job.queue, func.count())
            .where(Job.status == JobStatus.QUEUED)
            .group_by(Job.queue)
        ).all()
    )
    target = pick_queue(settings.default_queue, workers)
    missing = sorted(
        q for q, n in per_queue.items() if n == 0 and (q == target or waiting.get(q, 0) > 0)
    )
    if missing:
        detail = "no live worker serves the " + " and ".join(missing) + " queue"
        detail += "s" if len(missing) > 1 else ""
        detail += "; jobs there stay queued until one starts (cake worker)"
    else:
        detail = "every queue that jobs go to has a live worker"
    return {
        "live": per_queue,
        "missing": missing,
        "queued": {q: int(waiting.get(q, 0)) for q in per_queue},
        "default_queue": target,
        "detail": detail,
        "workers": [
            {
                "id": w.id,
                "queues": list(w.queues or ()),
                "device": w.device,
                "last_seen": w.heartbeat_at,
            }
            for w in workers
        ],
    }


def flag_unserved_jobs(
    session: Session, settings: Settings, now: datetime | None = None
) -> list[str]:
    """Add a ``no_worker`` event to each job queued for at least ``no_worker_after_s`` on a
    queue that no live worker serves, once per stay in the queue (a job that a worker starts,
    or that is queued again, may get another). Returns the ids; the caller commits.

    The job's row is locked (``FOR UPDATE`` on PostgreSQL) while its log is checked and the
    event added, so two API processes watching at once add it once.
    """
    now = now or utcnow()
    served = {q for q, n in workers_per_queue(live_workers(session, settings, now)).items() if n}
    cutoff = now - timedelta(seconds=settings.no_worker_after_s)
    candidates = session.execute(
        select(Job.id, Job.queue)
        .where(Job.status == JobStatus.QUEUED, Job.updated_at <= cutoff)
        .order_by(Job.created_at)
        .limit(500)
    ).all()
    from cake_shared.job_events import add_event

    flagged: list[str] = []
    for job_id, queue in candidates:
        if queue in served:
            continue
        locked = session.execute(
            select(Job.id).where(Job.id == job_id, Job.status == JobStatus.QUEUED).with_for_update()
        ).first()
        if locked is None:
            continue
        last_flag = session.scalar(
            select(func.max(JobEvent.seq)).where(
                JobEvent.job_id == job_id, JobEvent.type == NO_WORKER
            )
        )
        if last_flag is not None:
            last_reset = session.scalar(
                select(func.max(JobEvent.seq)).where(
                    JobEvent.job_id == job_id, JobEvent.type.in_(_RESET_EVENTS)
                )
            )
            if last_reset is None or last_reset < last_flag:
                continue
        add_event(
            session,
            job_id,
            NO_WORKER,
            f"no live worker serves the {queue} queue; the job stays queued and starts when "
            "a worker for it comes (cake worker)",
            level="warning",
            data={"queue": queue, "live_workers": 0},
        )
        flagged.append(job_id)
    return flagged


class WorkerWatch(BackgroundLoop):
    """The API's watcher thread: :func:`flag_unserved_jobs` every ``interval_s`` seconds on
    ``sessions`` (the app's session factory)."""

    thread_name = "cake-worker-watch"

    def __init__(self, sessions: Any, settings: Settings, interval_s: float | None = None) -> None:
        super().__init__()
        self.sessions = sessions
        self.settings = settings
        self.interval_s = interval_s or settings.worker_watch_interval_s

    def run_once(self) -> list[str]:
        with self.sessions() as session:
            flagged = flag_unserved_jobs(session, self.settings)
            session.commit()
        for job_id in flagged:
            log.warning("job %s: queued, and no live worker serves its queue", job_id)
        return flagged

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
                failing = False
            except Exception as exc:  # the database may be down or not migrated yet
                if not failing:
                    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                    log.warning(
                        "the worker watch failed (%s: %s); retrying quietly",
                        type(exc).__name__,
                        reason[0] if reason else "",
                    )
                failing = True
