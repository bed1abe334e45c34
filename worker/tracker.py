"""Reporting a running job into the database: progress, phase changes, events and heartbeats.

:class:`JobTracker` is what :func:`worker.runner.process_job` hands the pipeline as its
``on_progress`` and ``should_cancel`` callbacks, and the background thread that heartbeats the
job. It lives apart from the runner (which decides how a job ends) because its job is different:
keeping the job's database row and log up to date through database outages, fenced by the claim
token so that a worker that lost the job writes nothing more.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from cake_core.pipeline import Progress
from cake_shared import jobs
from cake_shared.services import Services
from cake_shared.status import JobPhase

log = logging.getLogger("cake.worker")

#: How often the cancel flag is read from the database while a job runs (seconds).
CANCEL_CHECK_S = 0.5
#: A running job is written (progress or heartbeat) at least this often (seconds).
HEARTBEAT_S = 1.0
#: Events kept while the database is unreachable (oldest dropped beyond this).
MAX_BUFFERED_EVENTS = 1000


class ShutdownFlag(Protocol):
    """Says the worker is shutting down: the Celery worker's flag in shared memory
    (:class:`worker.app.SharedFlag`, which prefork pool children read too), or a
    :class:`threading.Event` of a caller that runs jobs in its own threads."""

    def is_set(self) -> bool: ...


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
        shutdown: ShutdownFlag | None = None,
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
            self.event("metrics", "evaluation: " + describe_metrics(report.metrics), **base,
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


def describe_metrics(metrics: dict[str, Any]) -> str:
    """The evaluation's headline figures as one line of text (``"done"`` when none)."""
    keys = (
        "agreement_synthetic",
        "fidelity_estimate",
        "student_accuracy",
        "teacher_accuracy",
        "agreement_eval",
    )
    parts = [f"{k} {metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), float)]
    return ", ".join(parts) or "done"
