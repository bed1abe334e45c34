"""Jobs: lookups, the tenant's list, inserting and enqueueing, cancelling, deleting."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import Engine, bindparam, delete, select
from sqlalchemy.orm import Session

from api import quotas
from api.crud.common import find_owned, newest_first, or_404
from api.crud.events import add_event
from api.deps import AppContext
from api.errors import ApiError, not_found
from api.job_planning import JobPlan
from cake_shared import workers
from cake_shared.ids import new_id
from cake_shared.jobs import request_cancel
from cake_shared.models import Artifact, Job, JobEvent, utcnow
from cake_shared.status import ACTIVE_STATUSES, JobPhase, JobStatus

log = logging.getLogger("cake.api")


def get_job(session: Session, tenant: str, job_id: str) -> Job:
    """The job a path names; 404 when unknown or another tenant's."""
    return or_404(find_owned(session, Job, tenant, job_id), "job", job_id)


#: ``tenant`` and ``updated_at`` of one job, in SQLAlchemy Core: the statement is built once
#: and its compiled form cached, so a poll skips the ORM's per-query work (cache key, compile
#: state, loading), which cost more than the query itself.
_STAMP = select(Job.__table__.c.tenant, Job.__table__.c.updated_at).where(
    Job.__table__.c.id == bindparam("job_id")
)


def job_stamp(engine: Engine, tenant: str, job_id: str) -> datetime | None:
    """The job's ``updated_at`` (what its ETag is made of), 404 exactly like :func:`get_job`.

    Two columns instead of the whole row, on a pooled connection without an ORM session: a
    poll whose ``If-None-Match`` still matches, or whose body is kept from before
    (``api.job_bodies``), needs nothing else.
    """
    with engine.connect() as connection:
        found = connection.execute(_STAMP, {"job_id": job_id}).first()
    if found is None or found.tenant != tenant:
        raise not_found("job", job_id)
    return found.updated_at


def list_jobs(
    session: Session,
    tenant: str,
    status: JobStatus | None,
    teacher_id: str | None,
    limit: int,
    after: str | None,
) -> tuple[list[Job], bool]:
    """A page of the tenant's jobs, newest first, optionally of one status or one teacher."""
    stmt = select(Job).where(Job.tenant == tenant)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if teacher_id is not None:
        stmt = stmt.where(Job.teacher_id == teacher_id)
    return newest_first(session, stmt, Job, limit, after)


def queue_for(ctx: AppContext, session: Session) -> str:
    """``gpu``/``cpu`` when configured explicitly; ``auto``: ``gpu`` while a live GPU worker
    serves that queue (worker heartbeats), else ``cpu``."""
    return workers.route_queue(session, ctx.settings)


def insert_job(
    ctx: AppContext, session: Session, tenant: str, teacher_id: str, plan: JobPlan
) -> Job:
    """Add the queued job and its first event (not committed); 429 when the tenant's queue is
    full."""
    quotas.check_queued_jobs(session, ctx.settings, tenant)
    queue = queue_for(ctx, session)
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant=tenant,
        teacher_id=teacher_id,
        eval_dataset_id=plan.eval_dataset_id,
        status=JobStatus.QUEUED,
        phase=JobPhase.QUEUED,
        progress=0.0,
        spec=plan.spec,
        metrics={},
        error=None,
        attempts=0,
        job_metadata=plan.metadata,
        queue=queue,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
        callback_url=plan.callback_url,
    )
    session.add(job)
    session.flush()
    add_event(
        session, job.id, JobStatus.QUEUED, f"job queued on the {queue} queue", {"queue": queue}
    )
    return job


def enqueue(ctx: AppContext, session: Session, job: Job) -> None:
    """Send the committed job's id to the app's broker (``ctx.queue``).

    The row is committed first so a fast worker always finds it. If the broker does not answer,
    the job is still accepted: the database is the source of truth, the job stays ``queued``
    and the workers' sweeper (``cake_shared.jobs.requeue_lost_queued_jobs``) publishes it again,
    so the client gets its 202 and a warning event instead of an error it would retry into a
    duplicate job.
    """
    try:
        ctx.queue.enqueue(job.id, job.queue)
    except Exception as exc:
        log.warning("could not enqueue job %s on %s: %s", job.id, job.queue, exc)
        add_event(
            session,
            job.id,
            "enqueue_delayed",
            "the broker did not accept the job yet; it is queued again automatically",
            {"reason": type(exc).__name__},
            level="warning",
        )
        session.commit()


def cancel_job(session: Session, tenant: str, job_id: str) -> Job:
    """Queued: canceled now. Running: ``cancel_requested`` (the worker stops at its next step).
    Finished: unchanged. The state change is the shared, race-safe ``request_cancel`` (the same
    compare-and-set rules the worker's claim uses)."""
    job = get_job(session, tenant, job_id)
    request_cancel(session, job.id)
    session.commit()
    session.refresh(job)
    return job


def delete_job(ctx: AppContext, session: Session, tenant: str, job_id: str) -> None:
    """Delete a finished job with its events, artifacts and stored files (409 while active)."""
    job = get_job(session, tenant, job_id)
    if job.status in ACTIVE_STATUSES:
        raise ApiError(
            409, "conflict", f"job {job.id} is {job.status}; cancel it and wait until it ends"
        )
    keys = list(session.scalars(select(Artifact.storage_key).where(Artifact.job_id == job.id)))
    session.execute(delete(Artifact).where(Artifact.job_id == job.id))
    session.execute(delete(JobEvent).where(JobEvent.job_id == job.id))
    session.delete(job)
    session.commit()
    for key in {*keys, *ctx.store.list(f"jobs/{job.id}/")}:
        try:
            ctx.store.delete(key)
        except Exception:
            log.warning("could not delete %s from the store", key)
