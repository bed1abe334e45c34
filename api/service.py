"""What the routes do, separated from HTTP: lookups, pagination, creating teachers and jobs.

Everything here is synchronous (SQLAlchemy sessions, the object store, the sandboxed checks);
async routes call it through the thread pool. Every query filters by tenant, so an id of
another tenant is indistinguishable from an unknown one (404).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from api import quotas, schemas
from api.deps import AppContext
from api.errors import ApiError, not_found, spec_error, validation_error
from api.npz import DatasetFacts
from api.uploads import TeacherFacts, UploadedFile
from cake_core.architectures import student_arch
from cake_core.config import JobSpec, WorkLimitError, WorkLimits, check_work, resolve_spec
from cake_core.errors import SpecError
from cake_shared import workers
from cake_shared.ids import new_id
from cake_shared.job_events import add_event as shared_add_event
from cake_shared.job_view import job_json
from cake_shared.jobs import request_cancel
from cake_shared.models import Artifact, Dataset, Job, JobEvent, Teacher, utcnow
from cake_shared.settings import Settings
from cake_shared.status import ACTIVE_STATUSES, JobPhase, JobStatus
from cake_shared.webhooks import CallbackURLError, check_callback_url

log = logging.getLogger("cake.api")

MAX_METADATA_BYTES = 16 * 1024
Row = TypeVar("Row", Teacher, Job, Dataset)


# --------------------------------------------------------------------------------------------
# ORM -> response
# --------------------------------------------------------------------------------------------


def teacher_out(row: Teacher) -> dict[str, Any]:
    return schemas.Teacher(
        id=row.id,
        name=row.name,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        input_shape=list(row.input_shape),
        num_classes=row.num_classes,
        parameters=row.parameters,
        created_at=row.created_at,
    ).model_dump(mode="json")


def dataset_out(row: Dataset) -> dict[str, Any]:
    return schemas.Dataset(
        id=row.id,
        name=row.name,
        num_examples=row.num_examples,
        input_shape=list(row.input_shape),
        num_classes=row.num_classes,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
    ).model_dump(mode="json")


def job_out(row: Job) -> dict[str, Any]:
    """The Job object: the shared serializer (the webhook body is the same), checked against
    the documented response model."""
    return schemas.Job.model_validate(job_json(row)).model_dump(mode="json")


def event_out(row: JobEvent) -> dict[str, Any]:
    return schemas.Event(
        id=row.id,
        created_at=row.created_at,
        level=row.level,
        type=row.type,
        message=row.message,
        data=row.data or {},
    ).model_dump(mode="json")


def artifact_out(row: Artifact) -> dict[str, Any]:
    return schemas.Artifact(
        name=row.name, size_bytes=row.size_bytes, sha256=row.sha256, content_type=row.content_type
    ).model_dump(mode="json")


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_after": data[-1]["id"] if has_more and data else None,
    }


def newest_first(
    session: Session, stmt: Select[tuple[Row]], model: type[Row], limit: int, after: str | None
) -> tuple[list[Row], bool]:
    """One page, newest first: IDs sort by creation time, so the cursor is ``id < after``."""
    if after:
        stmt = stmt.where(model.id < after)
    rows = list(session.scalars(stmt.order_by(model.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


# --------------------------------------------------------------------------------------------
# lookups
# --------------------------------------------------------------------------------------------


def get_teacher(session: Session, tenant: str, teacher_id: str) -> Teacher:
    row = session.get(Teacher, teacher_id)
    if row is None or row.tenant != tenant or row.deleted_at is not None:
        raise not_found("teacher", teacher_id)
    return row


def get_job(session: Session, tenant: str, job_id: str) -> Job:
    row = session.get(Job, job_id)
    if row is None or row.tenant != tenant:
        raise not_found("job", job_id)
    return row


def get_dataset(session: Session, tenant: str, dataset_id: str) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.tenant != tenant:
        raise not_found("dataset", dataset_id)
    return row


def add_event(
    session: Session,
    job_id: str,
    type_: str,
    message: str,
    data: dict[str, Any] | None = None,
    level: str = "info",
) -> None:
    """Append to the job's log, the same way the worker does (``cake_shared.jobs``)."""
    shared_add_event(session, job_id, type_, message, level=level, data=data)


# --------------------------------------------------------------------------------------------
# teachers
# --------------------------------------------------------------------------------------------


def store_by_content(ctx: AppContext, kind: str, upload: UploadedFile) -> str:
    """Store an upload under ``<kind>/<sha256>`` unless that object is already there."""
    key = f"{kind}/{upload.sha256}"
    if not ctx.store.exists(key):
        ctx.store.put_file(key, upload.path)
    return key


def store_dataset(
    ctx: AppContext,
    session: Session,
    tenant: str,
    upload: UploadedFile,
    facts: DatasetFacts,
    name: str | None,
) -> Dataset:
    """Put the file in the store under ``datasets/<sha256>`` (once) and add the row."""
    quotas.check_storage(session, ctx.settings, tenant, upload.size)
    row = Dataset(
        id=new_id("dataset"),
        tenant=tenant,
        name=name,
        sha256=upload.sha256,
        size_bytes=upload.size,
        num_examples=facts.num_examples,
        input_shape=facts.input_shape,
        num_classes=facts.num_classes,
        storage_key=store_by_content(ctx, "datasets", upload),
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def store_teacher(
    ctx: AppContext,
    session: Session,
    tenant: str,
    upload: UploadedFile,
    facts: TeacherFacts,
    name: str | None,
) -> Teacher:
    """Put the file in the store under ``teachers/<sha256>`` (once) and add the row."""
    quotas.check_storage(session, ctx.settings, tenant, upload.size)
    key = store_by_content(ctx, "teachers", upload)
    row = Teacher(
        id=new_id("teacher"),
        tenant=tenant,
        name=name,
        sha256=upload.sha256,
        size_bytes=upload.size,
        input_shape=facts.input_shape,
        num_classes=facts.num_classes,
        parameters=facts.parameters,
        storage_key=key,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def delete_teacher(ctx: AppContext, session: Session, tenant: str, teacher_id: str) -> None:
    """Delete a teacher no queued or running job needs (409 otherwise).

    The row is kept, marked deleted, so finished jobs still name their teacher; it no longer
    appears in lists or lookups. The stored file goes when no live teacher shares it.
    """
    row = get_teacher(session, tenant, teacher_id)
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.teacher_id == row.id, Job.status.in_(ACTIVE_STATUSES))
    )
    if active:
        raise ApiError(
            409,
            "conflict",
            f"teacher {row.id} is used by {active} queued or running job(s); cancel them or "
            "wait until they finish",
        )
    row.deleted_at = utcnow()
    session.commit()
    shared = session.scalar(
        select(func.count())
        .select_from(Teacher)
        .where(Teacher.sha256 == row.sha256, Teacher.deleted_at.is_(None))
    )
    if not shared:
        ctx.store.delete(row.storage_key)


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------


def queue_for(ctx: AppContext, session: Session) -> str:
    """``gpu``/``cpu`` when configured explicitly; ``auto``: ``gpu`` while a live GPU worker
    serves that queue (worker heartbeats), else ``cpu``."""
    return workers.route_queue(session, ctx.settings)


@dataclass
class JobPlan:
    """A validated job, ready to insert."""

    spec: dict[str, Any]
    eval_dataset_id: str | None
    metadata: dict[str, Any]
    callback_url: str | None = None


def plan_job(
    session: Session,
    tenant: str,
    teacher: Teacher | TeacherFacts,
    body: schemas.JobSpecIn,
    loc: list[str | int],
    settings: Settings | None = None,
) -> JobPlan:
    """Resolve and check a job spec against its teacher (and eval data set).

    ``loc`` prefixes error locations (``["body"]`` for JSON, ``["body", "spec"]`` for the
    one-shot form). With ``settings``, the job's total work is checked against the
    ``CAKE_MAX_JOB_*`` caps. Raises ApiError 422/404 naming the field(s).
    """
    spec_dict = body.model_dump(
        exclude_none=True, include={"student", "synthesis", "training", "preset", "seed"}
    )
    try:
        spec = resolve_spec(spec_dict, num_classes=teacher.num_classes)
    except SpecError as exc:
        raise spec_error(exc, loc) from None

    shape = list(teacher.input_shape)
    if settings is not None:
        _check_work(spec, shape, settings, loc)
    try:  # the engine's own check (torch-free), so the worker never meets a student it refuses
        spec.student.arch = student_arch(spec.student.arch, shape)
    except SpecError as exc:
        raise validation_error([*loc, *exc.field.split(".")], exc.reason) from None

    metadata = body.metadata or {}
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise validation_error([*loc, "metadata"], "must be at most 16 KiB of JSON")

    if body.eval_dataset_id is not None:
        dataset = session.get(Dataset, body.eval_dataset_id)
        if dataset is None or dataset.tenant != tenant:
            raise ApiError(
                404,
                "not_found",
                f"no dataset with id {body.eval_dataset_id!r}",
                errors=[{"loc": [*loc, "eval_dataset_id"], "msg": "no such data set"}],
            )
        if list(dataset.input_shape) != shape:
            raise ApiError(
                422,
                "dataset_invalid",
                f"data set {dataset.id} has input shape {list(dataset.input_shape)} but the "
                f"teacher takes {shape}",
            )
        if dataset.num_classes > teacher.num_classes:
            raise ApiError(
                422,
                "dataset_invalid",
                f"data set {dataset.id} has labels up to {dataset.num_classes - 1} but the "
                f"teacher has {teacher.num_classes} classes (0..{teacher.num_classes - 1})",
            )
    return JobPlan(
        spec=spec.to_dict(),
        eval_dataset_id=body.eval_dataset_id,
        metadata=metadata,
        callback_url=body.callback_url,
    )


def check_callback(ctx: AppContext, url: str | None, loc: list[str | int]) -> None:
    """422 for a callback the deployment will not call (``webhook_allow_private`` off and the
    host resolves to an internal address); the syntax was checked by the request model."""
    if url is None:
        return
    try:
        check_callback_url(url, ctx.settings)
    except CallbackURLError as exc:
        raise validation_error(loc, str(exc)) from None


def _check_work(spec: JobSpec, shape: list[int], settings: Settings, loc: list[str | int]) -> None:
    """422 naming every field of a product that exceeds a ``CAKE_MAX_JOB_*`` cap."""
    limits = WorkLimits(
        synthesis_steps=settings.max_job_synthesis_steps,
        training_samples=settings.max_job_training_samples,
        synthetic_bytes=settings.max_job_synthetic_bytes,
    )
    try:
        check_work(spec, shape, limits)
    except WorkLimitError as exc:
        errors = [{"loc": [*loc, *f.split(".")], "msg": exc.message} for f in exc.fields]
        raise ApiError(422, "validation_error", exc.message, errors=errors) from None


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
