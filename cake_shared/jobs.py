"""Job state operations on the database, shared by the worker and the API.

The database is the source of truth for a job's state; the broker only carries job ids. Every
write a worker makes on a running job is a compare-and-set on the job's *claim token*: a worker
that lost its claim (its heartbeat went stale and another worker took the job over, or the job
was handed back) can no longer change the job, so a redelivered message never leads to two
workers writing the same job.

State machine: ``queued -> running -> succeeded | failed | canceled``, plus ``running ->
queued`` when a worker hands a job back (shutdown, retry after an internal error) or stops
answering (the sweeper). Terminal states never change again.

The operations that open their own transactions take the process's
:class:`~cake_shared.services.Services` first (its session factory, settings and job queue);
the ones that work inside the caller's transaction (:func:`add_event`, :func:`request_cancel`)
take the caller's session.

The event log and the helpers every transition shares live in :mod:`cake_shared.job_events`, the
sweeper's recovery of stale and lost jobs in :mod:`cake_shared.job_sweep`; their public names are
re-exported here, so ``from cake_shared import jobs`` still reaches every job operation.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from cake_shared.job_events import (
    add_event,
    enqueue_after_commit,
    json_safe,
    now_param,
    webhook_due,
)
from cake_shared.job_sweep import SweepResult, requeue_lost_queued_jobs, requeue_stale_jobs
from cake_shared.limits import running_slot_free
from cake_shared.models import Artifact, Job, JobEvent, utcnow
from cake_shared.status import TERMINAL_STATUSES, JobPhase, JobStatus

if TYPE_CHECKING:
    from cake_shared.services import Services

__all__ = [
    "ClaimState",
    "SweepResult",
    "TenantAtCapacity",
    "add_claimed_event",
    "add_event",
    "claim_job",
    "claim_state",
    "defer_job",
    "finish_job",
    "heartbeat",
    "json_safe",
    "request_cancel",
    "requeue_job",
    "requeue_lost_queued_jobs",
    "requeue_stale_jobs",
    "update_progress",
]


class TenantAtCapacity(Exception):
    """The job's tenant runs as many jobs as its limit allows: the job stays queued."""


def defer_job(services: Services, job_id: str, wait_s: float) -> bool:
    """Note that a queued job waits for a free slot and publish it again, to be retried in
    ``wait_s``; False when another message of the job already did (nothing published).

    A queued job's ``heartbeat_at`` (unused while queued) records when it last asked: only
    one message per ``wait_s / 2`` publishes again, so duplicate messages of a waiting job die
    out instead of multiplying, while one published by the sweeper (which touches
    ``updated_at`` only) still counts. The first deferral adds a ``waiting`` event.
    """
    now = utcnow()
    with services.session_scope() as session:
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.QUEUED,
                or_(
                    Job.heartbeat_at.is_(None),
                    Job.heartbeat_at < now - timedelta(seconds=wait_s / 2),
                ),
            )
            .values(heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return False
        waited = session.scalar(
            select(func.count(JobEvent.seq)).where(
                JobEvent.job_id == job_id, JobEvent.type == "waiting"
            )
        )
        if not waited:
            add_event(
                session,
                job_id,
                "waiting",
                "the tenant runs as many jobs as its limit allows; the job starts when one ends",
            )
        queue = session.scalar(select(Job.queue).where(Job.id == job_id)) or "cpu"
    enqueue_after_commit(services, job_id, queue, None, countdown=wait_s)
    return True


def claim_job(services: Services, job_id: str, worker_id: str) -> str | None:
    """Atomically take ``job_id`` for ``worker_id``; the claim token, or None when refused.

    A job is claimable when it is queued, or running with a heartbeat older than
    ``job_heartbeat_timeout_s`` (its worker died) and attempts left. A redelivered message for a
    job that a live worker runs, or for a finished or canceled job, is refused.
    """
    settings = services.settings
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.job_heartbeat_timeout_s)
    token = uuid.uuid4().hex
    with services.session_scope() as session:
        if not running_slot_free(session, settings, job_id):
            raise TenantAtCapacity(job_id)
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.status == JobStatus.QUEUED,
                    and_(
                        Job.status == JobStatus.RUNNING,
                        Job.heartbeat_at < cutoff,
                        Job.attempts < settings.job_max_attempts,
                    ),
                ),
            )
            .values(
                status=JobStatus.RUNNING,
                # The pipeline always starts (or resumes) with synthesis; clients see a running
                # job in one of the running phases from the first moment.
                phase=JobPhase.SYNTHESIZING,
                claimed_by=worker_id,
                claim_token=token,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now_param(now)),
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
    return token


def _set_while_claimed(
    session: Session, job_id: str, token: str, values: Mapping[str, Any]
) -> bool:
    """Write ``values`` to the job only while ``token`` still holds its claim on a running job.

    Every update a worker makes to its running job (heartbeat, progress, finish, hand-back) is
    this compare-and-set on the claim token (see the module docstring); one copy keeps the
    guard the same for all of them. False when the claim was lost and nothing was written.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.claim_token == token, Job.status == JobStatus.RUNNING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def heartbeat(services: Services, job_id: str, token: str) -> bool:
    """Mark the job alive; False when this worker no longer holds the claim.

    ``updated_at`` is written back unchanged (not bumped by its ``onupdate``): a heartbeat
    changes nothing a client sees, and the job's ETag (``GET /v1/jobs/{id}``) follows
    ``updated_at``, so a running job's pollers keep getting 304s between real updates. Nothing
    reads a running job's ``updated_at`` (stale workers are found by ``heartbeat_at``).
    """
    values = {"heartbeat_at": utcnow(), "updated_at": Job.updated_at}
    with services.session_scope() as session:
        return _set_while_claimed(session, job_id, token, values)


def update_progress(
    services: Services,
    job_id: str,
    token: str,
    phase: str,
    progress: float,
    metrics: Mapping[str, Any] | None = None,
) -> bool:
    """Write phase and progress (and heartbeat); progress never goes down.

    False when this worker no longer holds the claim.
    """
    progress = min(1.0, max(0.0, float(progress)))
    values: dict[str, Any] = {
        "phase": phase,
        "progress": case((Job.progress < progress, progress), else_=Job.progress),
        "heartbeat_at": utcnow(),
    }
    if metrics is not None:
        values["metrics"] = json_safe(dict(metrics))
    with services.session_scope() as session:
        return _set_while_claimed(session, job_id, token, values)


@dataclass(frozen=True)
class ClaimState:
    """What a running worker needs to know between steps."""

    owned: bool  # this worker still holds the claim
    cancel_requested: bool


def claim_state(services: Services, job_id: str, token: str) -> ClaimState:
    with services.session_scope() as session:
        row = session.execute(
            select(Job.status, Job.claim_token, Job.cancel_requested).where(Job.id == job_id)
        ).first()
    if row is None:
        return ClaimState(owned=False, cancel_requested=True)
    owned = row.status == JobStatus.RUNNING and row.claim_token == token
    return ClaimState(owned=owned, cancel_requested=bool(row.cancel_requested))


def add_claimed_event(
    services: Services,
    job_id: str,
    token: str,
    type: str,
    message: str,
    level: str = "info",
    data: Mapping[str, Any] | None = None,
) -> bool:
    """Append an event for the worker holding claim ``token``; False (nothing written) when it
    no longer holds it. The job's row is locked while the event is added (``FOR UPDATE`` on
    PostgreSQL), so a sweeper's requeue cannot slip in between the check and the insert: a
    worker that was frozen past its heartbeat timeout cannot add its stale progress to the log
    of the attempt that replaced it."""
    with services.session_scope() as session:
        owned = session.execute(
            select(Job.id)
            .where(Job.id == job_id, Job.claim_token == token, Job.status == JobStatus.RUNNING)
            .with_for_update()
        ).first()
        if owned is None:
            return False
        add_event(session, job_id, type, message, level, data)
    return True


def finish_job(
    services: Services,
    job_id: str,
    token: str,
    status: JobStatus,
    *,
    metrics: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    artifacts: Sequence[Mapping[str, Any]] = (),
    message: str | None = None,
    data: Mapping[str, Any] | None = None,
    student: Mapping[str, Any] | None = None,
    artifacts_attempt: int | None = None,
) -> bool:
    """End a running job as ``status`` (succeeded/failed/canceled), in one transaction with its
    artifact rows and its final event. False (and nothing written) when the claim was lost.

    ``artifacts``: dicts with name, size_bytes, sha256, content_type, storage_key. ``student``:
    the student the engine built (``arch``, ``width``, ``width_reason``), recorded in the job's
    spec in place of the requested one (a width left to the budget becomes the chosen width).
    ``artifacts_attempt``: the attempt whose folder the artifacts were uploaded to
    (``cake_shared.job_keys``); recorded in the same transaction as the rows, and only by the
    claim holder, so the job points at the attempt that won and never at a stale one.
    """
    if status not in TERMINAL_STATUSES:
        raise ValueError(f"not a terminal status: {status!r}")
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "phase": JobPhase(status),
        "finished_at": now,
        "heartbeat_at": now,
        "claim_token": None,
        **webhook_due(now),
    }
    if status == JobStatus.SUCCEEDED:
        values["progress"] = 1.0
        values["error"] = None
    if artifacts_attempt is not None:
        values["artifacts_attempt"] = artifacts_attempt
    if metrics is not None:
        values["metrics"] = json_safe(dict(metrics))
    if error is not None:
        values["error"] = json_safe(dict(error))
    default_messages = {
        JobStatus.SUCCEEDED: "job succeeded",
        JobStatus.FAILED: f"job failed: {error.get('message') if error else 'unknown error'}",
        JobStatus.CANCELED: "job canceled",
    }
    with services.session_scope() as session:
        if not _set_while_claimed(session, job_id, token, values):
            session.rollback()
            return False
        if student is not None:
            row = session.get(Job, job_id)
            if row is not None:
                row.spec = {**dict(row.spec or {}), "student": json_safe(dict(student))}
        for item in artifacts:
            session.merge(
                Artifact(
                    job_id=job_id,
                    name=item["name"],
                    size_bytes=int(item["size_bytes"]),
                    sha256=item["sha256"],
                    content_type=item["content_type"],
                    storage_key=item["storage_key"],
                    created_at=now,
                )
            )
        add_event(
            session,
            job_id,
            status,
            message or default_messages[status],
            level="error" if status == JobStatus.FAILED else "info",
            data=data,
        )
    return True


def requeue_job(
    services: Services,
    job_id: str,
    token: str,
    *,
    reason: str,
    refund_attempt: bool = False,
    level: str = "warning",
    data: Mapping[str, Any] | None = None,
    enqueue: Callable[[str, str], None] | None = None,
) -> bool:
    """Hand a running job back to the queue (worker shutdown, retry after an internal error).

    ``refund_attempt`` does not count this attempt toward ``job_max_attempts`` (a clean
    hand-back at shutdown is not a failure). The checkpoints stay, so the next attempt resumes.
    """
    with services.session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return False
        handed_back = {
            "status": JobStatus.QUEUED,
            "phase": JobPhase.QUEUED,
            "claim_token": None,
            "claimed_by": None,
            "heartbeat_at": None,
            "attempts": Job.attempts - 1 if refund_attempt else Job.attempts,
        }
        if not _set_while_claimed(session, job_id, token, handed_back):
            session.rollback()
            return False
        queue = job.queue
        add_event(session, job_id, "requeued", reason, level=level, data=data)
    enqueue_after_commit(services, job_id, queue, enqueue)
    return True


def request_cancel(session: Session, job_id: str) -> str | None:
    """Cancel for the API: a queued job ends ``canceled`` at once (atomically, so a worker that
    claims it at the same moment cannot also start it); a running one gets ``cancel_requested``
    and its worker stops at the next step. Returns the job's status afterwards (None: no job).
    """
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.CANCELED,
            phase=JobPhase.CANCELED,
            cancel_requested=True,
            finished_at=now,
            claim_token=None,
            **webhook_due(now),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        add_event(session, job_id, JobStatus.CANCELED, "job canceled before it started")
        return JobStatus.CANCELED
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.cancel_requested.is_(False))
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        add_event(session, job_id, "cancel_requested", "cancel requested; stopping at next step")
    return session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
