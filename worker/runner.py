"""Run one job: claim it, fetch its inputs, run the engine, record every step, upload results.

:func:`process_job` is what the Celery task calls, and what tests call in-process, with the
worker's :class:`~cake_shared.services.Services` (settings, database, store, queue). It claims
the job in the database first (a redelivered message for a job another live worker runs, or for
a finished or canceled job, does nothing), then runs :func:`cake_core.pipeline.run_job` with:

- ``on_progress`` writing phase and progress to the database (phase changes at once, otherwise
  at most every ``progress_interval_s``) and an event for each phase change, synthesis chunk,
  training epoch and the evaluation;
- ``should_cancel`` reading the cancel flag (about twice a second), and also saying stop when
  the worker shuts down or has lost its claim;
- checkpoints in the object store, so a later attempt resumes where this one stopped.

A background thread heartbeats the job (and flushes throttled progress) while it runs, so the
sweeper can tell a live job from one whose worker died.

Outcomes: success -> artifacts uploaded and recorded, ``succeeded``; a
:class:`~cake_core.errors.CakeError` (bad teacher, spec, data set; divergence) -> ``failed``
with its code and message; a cancel -> ``canceled``; worker shutdown -> handed back to the queue
(the attempt is not counted); anything else -> retried while attempts remain, then ``failed``
with code ``internal`` and a message that leaks no paths or traces (those go to the worker log).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from cake_core.device import Runtime, default_runtime
from cake_core.errors import CakeError, DatasetInvalidError, JobCanceled, TeacherInvalidError
from cake_core.pipeline import Progress, run_job
from cake_shared import jobs
from cake_shared.models import Dataset, Job, Teacher
from cake_shared.services import Services
from cake_shared.status import JobPhase, JobStatus
from cake_shared.storage import ObjectNotFound, ObjectStore
from worker.checkpoints import ObjectStoreCheckpoints

log = logging.getLogger("cake.worker")

ARTIFACT_CONTENT_TYPES = {
    "student.pt": "application/octet-stream",
    "manifest.json": "application/json",
    "samples.png": "image/png",
    "curves.png": "image/png",
    "report.md": "text/markdown; charset=utf-8",
}
#: How often the cancel flag is read from the database while a job runs (seconds).
CANCEL_CHECK_S = 0.5
#: A running job is written (progress or heartbeat) at least this often (seconds).
HEARTBEAT_S = 1.0
#: Events kept while the database is unreachable (oldest dropped beyond this).
MAX_BUFFERED_EVENTS = 1000
#: Fields the API may keep beside the engine's spec; the engine refuses unknown fields.
_NON_ENGINE_FIELDS = ("teacher_id", "eval_dataset_id", "metadata")


def worker_identity() -> str:
    """``host:pid``: the sweeper uses it to recognise claims of dead processes on this host."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_is_dead(claimed_by: str) -> bool:
    """True when ``claimed_by`` names a process on this host that no longer exists.

    Lets a restarted embedded worker hand back the job its predecessor was running at once
    instead of after the heartbeat timeout. Anything else (another host, a live or reused pid)
    is left to the heartbeat timeout.
    """
    host, _, pid_text = claimed_by.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class _JobInputs:
    attempt: int
    queue: str
    spec: dict[str, Any]
    input_shape: tuple[int, ...]
    teacher_key: str | None
    dataset_key: str | None
    has_dataset: bool
    cancel_requested: bool


class JobTracker:
    """Everything the running pipeline reports goes through here into the database.

    Database hiccups while running are logged, not fatal: the engine keeps computing, the next
    write or heartbeat tries again, and if the heartbeat stays away long enough for another
    worker to take over, this one notices (its claim token no longer matches) and stops.
    """

    def __init__(
        self,
        services: Services,
        job_id: str,
        token: str,
        attempt: int,
        *,
        interval_s: float,
        shutdown: threading.Event | None = None,
    ) -> None:
        self.services = services
        self.job_id = job_id
        self.token = token
        self.attempt = attempt
        self.interval_s = max(0.0, interval_s)
        self.shutdown = shutdown
        self.stop_reason: str | None = None  # "cancel" | "shutdown" | "lost"
        self.phase: str | None = None
        self._pending: tuple[str, float] | None = None
        self._last_write = time.monotonic()
        self._last_check = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events: collections.deque[tuple[str, str, str, dict[str, Any]]] = collections.deque(
            maxlen=MAX_BUFFERED_EVENTS
        )
        self._events_lock = threading.RLock()
        self._events_warned = 0.0

    # -- database writes ------------------------------------------------------------------
    def _write_progress(self, phase: str, fraction: float) -> None:
        try:
            if not jobs.update_progress(self.services, self.job_id, self.token, phase, fraction):
                self.stop_reason = self.stop_reason or "lost"
            self._pending = None
        except SQLAlchemyError as exc:
            log.warning("job %s: progress not written: %s", self.job_id, exc)
            self._pending = (phase, fraction)  # the heartbeat thread writes it when it can
        self._last_write = time.monotonic()

    def event(self, type: str, message: str, level: str = "info", **data: Any) -> None:
        """Append to the job's log. While the database is unreachable events wait here, in
        order, and the heartbeat thread writes them when it is back: an outage delays the
        log, it loses nothing (up to ``MAX_BUFFERED_EVENTS``)."""
        with self._events_lock:
            if len(self._events) == MAX_BUFFERED_EVENTS:
                log.warning("job %s: too many events waiting; the oldest is dropped", self.job_id)
            self._events.append((type, message, level, {"attempt": self.attempt, **data}))
        self.flush_events()

    def flush_events(self, *, strict: bool = False) -> bool:
        """Write the waiting events, oldest first; False (``strict``: raise) if the database
        refused, leaving the rest for the next try."""
        with self._events_lock:
            while self._events:
                type_, message, level, data = self._events[0]
                try:
                    # Fenced like every other write: once the claim is lost (frozen past the
                    # heartbeat timeout, job taken over), nothing more lands in the job's log.
                    written = jobs.add_claimed_event(
                        self.services, self.job_id, self.token, type_, message, level, data
                    )
                except SQLAlchemyError as exc:
                    if strict:
                        raise
                    if time.monotonic() - self._events_warned >= 5.0:  # not every 0.1 s
                        self._events_warned = time.monotonic()
                        log.warning("job %s: %d event(s) wait for the database: %s",
                                    self.job_id, len(self._events), exc)  # fmt: skip
                    return False
                if not written:
                    self.stop_reason = self.stop_reason or "lost"
                    self._events.clear()
                    return True
                self._events.popleft()
        return True

    # -- pipeline callbacks -----------------------------------------------------------------
    def on_progress(self, report: Progress) -> None:
        if report.event is not None:  # a log entry (e.g. which student), not progress
            self.event(
                report.event, report.message, report.level, phase=report.phase, **report.data
            )
            return
        with self._lock:
            if report.phase != self.phase:
                self.phase = report.phase
                self._write_progress(report.phase, report.fraction)
                self.event(
                    "phase",
                    report.message,
                    phase=report.phase,
                    progress=report.fraction,
                )
            else:
                self._pending = (report.phase, report.fraction)
                if time.monotonic() - self._last_write >= self.interval_s:
                    self._write_progress(report.phase, report.fraction)
        if not report.metrics:
            return
        base = {
            "phase": report.phase,
            "progress": report.fraction,
            "phase_progress": report.phase_fraction,
        }
        if report.phase == JobPhase.SYNTHESIZING:
            self.event("progress", report.message, **base, metrics=report.metrics)
        elif report.phase == JobPhase.TRAINING:
            self.event("metrics", report.message, **base, metrics=report.metrics)
        elif report.phase == JobPhase.EVALUATING:
            self.event("metrics", "evaluation: " + _describe(report.metrics), **base,
                       metrics=report.metrics)  # fmt: skip

    def owns(self) -> bool:
        """Whether this worker still holds the claim; asked before writes to the object store
        (checkpoints, artifacts) that a worker which lost the job must not make. True when the
        database cannot be asked: an outage must not stop a job that is still ours."""
        if self.stop_reason == "lost":
            return False
        try:
            state = jobs.claim_state(self.services, self.job_id, self.token)
        except SQLAlchemyError as exc:
            log.warning("job %s: claim not checked: %s", self.job_id, exc)
            return True
        if not state.owned:
            self.stop_reason = "lost"
        elif state.cancel_requested and self.stop_reason is None:
            self.stop_reason = "cancel"  # the pipeline stops at its next step
        return state.owned

    def should_cancel(self) -> bool:
        if self.stop_reason is not None:
            return True
        if self.shutdown is not None and self.shutdown.is_set():
            self.stop_reason = "shutdown"
            return True
        now = time.monotonic()
        if now - self._last_check < CANCEL_CHECK_S:
            return False
        self._last_check = now
        try:
            state = jobs.claim_state(self.services, self.job_id, self.token)
        except SQLAlchemyError as exc:
            log.warning("job %s: cancel flag not read: %s", self.job_id, exc)
            return False
        if not state.owned:
            self.stop_reason = "lost"
        elif state.cancel_requested:
            self.stop_reason = "cancel"
        return self.stop_reason is not None

    # -- heartbeat thread ---------------------------------------------------------------------
    def _tick(self) -> None:
        with self._lock:
            since = time.monotonic() - self._last_write
            if self._pending is not None and since >= self.interval_s:
                self._write_progress(*self._pending)
            elif since >= HEARTBEAT_S:
                try:
                    if not jobs.heartbeat(self.services, self.job_id, self.token):
                        self.stop_reason = self.stop_reason or "lost"
                except SQLAlchemyError as exc:
                    log.warning("job %s: heartbeat not written: %s", self.job_id, exc)
                self._last_write = time.monotonic()

    def _beat(self) -> None:
        period = max(0.1, min(HEARTBEAT_S, self.interval_s or HEARTBEAT_S) / 2)
        while not self._stop.wait(period):
            self._tick()
            if self._events:
                self.flush_events()

    def __enter__(self) -> JobTracker:
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{self.job_id}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._events and (exc_type is None or issubclass(exc_type, Exception)):
            # The log must be complete before the job's last event; wait out a short outage.
            try:
                self.services.retrying(
                    f"event log of job {self.job_id}", lambda: self.flush_events(strict=True)
                )
            except SQLAlchemyError as exc:
                log.warning("job %s: %d event(s) lost: %s", self.job_id, len(self._events), exc)


def _describe(metrics: dict[str, Any]) -> str:
    keys = (
        "agreement_synthetic",
        "fidelity_estimate",
        "student_accuracy",
        "teacher_accuracy",
        "agreement_eval",
    )
    parts = [f"{k} {metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), float)]
    return ", ".join(parts) or "done"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_inputs(services: Services, job_id: str) -> _JobInputs | None:
    with services.session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        teacher = session.get(Teacher, job.teacher_id)
        dataset = session.get(Dataset, job.eval_dataset_id) if job.eval_dataset_id else None
        spec = {k: v for k, v in dict(job.spec or {}).items() if k not in _NON_ENGINE_FIELDS}
        return _JobInputs(
            attempt=job.attempts,
            queue=job.queue,
            spec=spec,
            input_shape=tuple(int(d) for d in teacher.input_shape) if teacher else (),
            teacher_key=teacher.storage_key if teacher else None,
            dataset_key=dataset.storage_key if dataset else None,
            has_dataset=job.eval_dataset_id is not None,
            cancel_requested=job.cancel_requested,
        )


def _fetch(store: ObjectStore, inputs: _JobInputs, work: Path) -> tuple[Path, Path | None]:
    """Download the teacher (and evaluation set); missing objects are the user's to fix."""
    if inputs.teacher_key is None:
        raise TeacherInvalidError("the job's teacher no longer exists; upload it again")
    teacher_path = work / "teacher.pt"
    try:
        store.get_file(inputs.teacher_key, teacher_path)
    except ObjectNotFound:
        raise TeacherInvalidError(
            "the teacher's file is missing from the object store; upload the teacher again"
        ) from None
    eval_path = None
    if inputs.has_dataset:
        if inputs.dataset_key is None:
            raise DatasetInvalidError("the job's evaluation data set no longer exists")
        eval_path = work / "eval.npz"
        try:
            store.get_file(inputs.dataset_key, eval_path)
        except ObjectNotFound:
            raise DatasetInvalidError(
                "the evaluation data set's file is missing from the object store; upload it again"
            ) from None
    return teacher_path, eval_path


def _upload_artifacts(
    store: ObjectStore, job_id: str, artifacts: dict[str, Path]
) -> list[dict[str, Any]]:
    rows = []
    for name, path in artifacts.items():
        key = f"jobs/{job_id}/artifacts/{name}"
        store.put_file(key, path)
        rows.append(
            {
                "name": name,
                "size_bytes": path.stat().st_size,
                "sha256": _sha256(path),
                "content_type": ARTIFACT_CONTENT_TYPES.get(name, "application/octet-stream"),
                "storage_key": key,
            }
        )
    return rows


def _clear_checkpoints(checkpoints: ObjectStoreCheckpoints | None) -> None:
    if checkpoints is None:
        return
    try:
        checkpoints.clear()
    except Exception as exc:  # a leftover checkpoint wastes space, nothing else
        log.warning("could not delete checkpoints under %s: %s", checkpoints.prefix, exc)


#: How long a job whose tenant is at its running-jobs limit waits before it asks again.
SLOT_WAIT_S = 5.0


def _wait_for_slot(services: Services, job_id: str) -> None:
    """Publish the job again to be retried in ``SLOT_WAIT_S``: it stays queued, never dropped
    (were the publish lost, the sweeper publishes queued jobs the broker no longer holds)."""
    if jobs.defer_job(services, job_id, SLOT_WAIT_S):
        log.info(
            "job %s: its tenant is at its running-jobs limit; retry in %g s", job_id, SLOT_WAIT_S
        )
    else:
        log.info("job %s: waits for a slot of its tenant (already rescheduled)", job_id)


def process_job(
    services: Services,
    job_id: str,
    *,
    worker_id: str | None = None,
    shutdown: threading.Event | None = None,
    runtime: Runtime | None = None,
    store: ObjectStore | None = None,
) -> str:
    """Run ``job_id`` if this worker can claim it; returns what happened.

    One of ``skipped`` (not claimable), ``waiting`` (its tenant is at its running-jobs limit;
    published again for later), ``succeeded``, ``failed``, ``canceled``, ``requeued``
    (handed back for a retry or at shutdown) or ``lost`` (another worker took the job over).

    ``services`` are the worker's settings, database, store and queue; ``runtime`` (default:
    ``CAKE_WORKER_DEVICE``, else CUDA when present) and ``store`` (default:
    ``services.store``) may be given by the caller.
    """
    settings = services.settings
    worker_id = worker_id or worker_identity()
    try:
        token = services.retrying(
            f"claim of job {job_id}", lambda: jobs.claim_job(services, job_id, worker_id)
        )
    except jobs.TenantAtCapacity:
        _wait_for_slot(services, job_id)
        return "waiting"
    if token is None:
        log.info("job %s: not claimable (running elsewhere, finished or unknown); skipped", job_id)
        return "skipped"
    inputs = services.retrying(f"start of job {job_id}", lambda: _load_inputs(services, job_id))
    if inputs is None:  # deleted between claim and load
        return "skipped"
    tracker = JobTracker(
        services,
        job_id,
        token,
        inputs.attempt,
        interval_s=settings.progress_interval_s,
        shutdown=shutdown,
    )
    if inputs.cancel_requested:
        _finish(
            services, job_id, token, JobStatus.CANCELED, message="job canceled before it started"
        )
        return JobStatus.CANCELED

    work = Path(tempfile.mkdtemp(prefix=f"cake-{job_id}-"))
    checkpoints: ObjectStoreCheckpoints | None = None
    try:
        runtime = runtime or default_runtime(settings.worker_device)
        store = store or services.store
        checkpoints = ObjectStoreCheckpoints(store, job_id, scratch=work, guard=tracker.owns)
        tracker.event(
            "started",
            f"attempt {inputs.attempt} started on {worker_id} ({runtime.device})",
            worker=worker_id,
            device=str(runtime.device),
        )
        log.info("job %s: attempt %d on %s", job_id, inputs.attempt, runtime.device)
        with tracker:
            teacher_path, eval_path = _fetch(store, inputs, work)
            saved = checkpoints.keys()
            if saved:
                chunks = sum(1 for k in saved if k.startswith("synthesis/"))
                tracker.event(
                    "resumed",
                    f"resuming from checkpoints: {chunks} synthesis chunk(s)"
                    + (", training" if "training" in saved else ""),
                    synthesis_chunks=chunks,
                    training="training" in saved,
                )
            result = run_job(
                teacher_path,
                inputs.input_shape,
                inputs.spec,
                work / "out",
                eval_path=eval_path,
                runtime=runtime,
                on_progress=tracker.on_progress,
                should_cancel=tracker.should_cancel,
                checkpoints=checkpoints,
            )
            # Last check before the results land: a worker that lost the job must not
            # overwrite its files, and a cancel that came during evaluation or export (after
            # the pipeline's last step) still ends the job canceled, as API.md promises.
            if not tracker.owns() or tracker.stop_reason == "cancel":
                raise JobCanceled("claim lost or canceled")
            rows = _upload_artifacts(store, job_id, result.artifacts)
        if not _finish(
            services,
            job_id,
            token,
            JobStatus.SUCCEEDED,
            metrics=result.metrics,
            artifacts=rows,
            student=asdict(result.spec.student),
            message=f"job succeeded: {_describe(result.metrics)}",
            data={"attempt": inputs.attempt, "artifacts": [r["name"] for r in rows]},
        ):
            log.warning("job %s: finished, but the claim was lost; result dropped", job_id)
            return "lost"
        _clear_checkpoints(checkpoints)
        log.info("job %s: succeeded", job_id)
        return JobStatus.SUCCEEDED
    except JobCanceled:
        return _stopped(services, job_id, token, tracker, checkpoints)
    except CakeError as exc:
        if tracker.stop_reason == "lost":
            return "lost"
        log.info("job %s: failed (%s): %s", job_id, exc.code, exc.message)
        _finish(
            services,
            job_id,
            token,
            JobStatus.FAILED,
            error={"code": exc.code, "message": exc.message},
            data={"attempt": inputs.attempt, "phase": tracker.phase, "code": exc.code},
        )
        _clear_checkpoints(checkpoints)
        return JobStatus.FAILED
    except Exception:
        log.exception("job %s: internal error in attempt %d", job_id, inputs.attempt)
        if tracker.stop_reason == "lost":
            return "lost"
        if inputs.attempt < settings.job_max_attempts:
            _requeue(
                services,
                job_id,
                token,
                reason=f"internal error in attempt {inputs.attempt} of "
                f"{settings.job_max_attempts}; the job will be retried",
                data={"attempt": inputs.attempt},
            )
            return "requeued"
        _finish(
            services,
            job_id,
            token,
            JobStatus.FAILED,
            error={
                "code": "internal",
                "message": f"the job failed {inputs.attempt} times because of an internal error "
                "in the worker; the service operator can find the details in the worker log",
            },
            data={"attempt": inputs.attempt, "phase": tracker.phase},
        )
        _clear_checkpoints(checkpoints)
        return JobStatus.FAILED
    except BaseException:
        # Cold shutdown or interpreter exit in the middle of a job: hand it back if we still
        # can, so it resumes on the next start instead of waiting for the heartbeat timeout.
        with contextlib.suppress(Exception):
            jobs.requeue_job(
                services,
                job_id,
                token,
                reason="worker stopped; job handed back",
                refund_attempt=True,
                level="info",
                data={"attempt": inputs.attempt},
            )
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _finish(services: Services, job_id: str, token: str, status: JobStatus, **details: Any) -> bool:
    """:func:`cake_shared.jobs.finish_job`, riding out a short database outage: the result of
    a whole job is not dropped for a connection that broke at the wrong moment."""
    return services.retrying(
        f"end of job {job_id}",
        lambda: jobs.finish_job(services, job_id, token, status, **details),
    )


def _requeue(services: Services, job_id: str, token: str, **details: Any) -> bool:
    """:func:`cake_shared.jobs.requeue_job` with the same patience as :func:`_finish`."""
    return services.retrying(
        f"hand-back of job {job_id}",
        lambda: jobs.requeue_job(services, job_id, token, **details),
    )


def _stopped(
    services: Services,
    job_id: str,
    token: str,
    tracker: JobTracker,
    checkpoints: ObjectStoreCheckpoints | None,
) -> str:
    """The pipeline stopped on request: canceled by the user, worker shutdown, or claim lost."""
    if tracker.stop_reason == "lost":
        log.warning("job %s: claim lost to another worker; stopped", job_id)
        return "lost"
    if tracker.stop_reason == "shutdown":
        jobs.requeue_job(
            services,
            job_id,
            token,
            reason="worker shutting down; the job goes back to the queue and resumes from its "
            "last checkpoint",
            refund_attempt=True,
            level="info",
            data={"attempt": tracker.attempt},
        )
        log.info("job %s: handed back at shutdown", job_id)
        return "requeued"
    _finish(
        services,
        job_id,
        token,
        JobStatus.CANCELED,
        message=f"job canceled during {tracker.phase or 'start-up'}",
        data={"attempt": tracker.attempt, "phase": tracker.phase},
    )
    _clear_checkpoints(checkpoints)
    log.info("job %s: canceled", job_id)
    return JobStatus.CANCELED
