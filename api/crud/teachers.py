"""Teachers: lookups, the tenant's list, storing an upload, deleting."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.crud.common import add_upload, find_owned, newest_first, or_404, or_404_at
from api.deps import AppContext
from api.errors import ApiError, conflict
from api.teacher_check import TeacherFacts
from api.uploads import UploadedFile
from cake_shared.ids import new_id
from cake_shared.models import Job, Teacher, utcnow
from cake_shared.status import ACTIVE_STATUSES


def find_teacher(session: Session, tenant: str, teacher_id: str) -> Teacher | None:
    """The tenant's live teacher; a deleted one is kept for the jobs that name it but is
    unknown to lookups."""
    row = find_owned(session, Teacher, tenant, teacher_id)
    if row is None or row.deleted_at is not None:
        return None
    return row


def get_teacher(session: Session, tenant: str, teacher_id: str) -> Teacher:
    """The teacher a path names; 404 when unknown, deleted or another tenant's."""
    return or_404(find_teacher(session, tenant, teacher_id), "teacher", teacher_id)


def get_job_teacher(
    session: Session, tenant: str, teacher_id: str, loc: list[str | int]
) -> Teacher:
    """The teacher a job body names; its 404 points at the field (``loc``)."""
    row = find_teacher(session, tenant, teacher_id)
    return or_404_at(row, "teacher", teacher_id, loc, "no such teacher")


def list_teachers(
    session: Session, tenant: str, limit: int, after: str | None
) -> tuple[list[Teacher], bool]:
    """A page of the tenant's live teachers, newest first, and whether more follow."""
    stmt = select(Teacher).where(Teacher.tenant == tenant, Teacher.deleted_at.is_(None))
    return newest_first(session, stmt, Teacher, limit, after)


def create_teacher(
    ctx: AppContext,
    session: Session,
    tenant: str,
    upload: UploadedFile,
    facts: TeacherFacts,
    name: str | None,
) -> Teacher:
    """Add the checked teacher (not committed), its file stored under ``teachers/<sha256>``;
    409 over the tenant's storage quota."""
    row = Teacher(
        id=new_id("teacher"),
        tenant=tenant,
        name=name,
        sha256=upload.sha256,
        size_bytes=upload.size,
        input_shape=facts.input_shape,
        num_classes=facts.num_classes,
        parameters=facts.parameters,
        created_at=utcnow(),
    )
    return add_upload(ctx, session, tenant, "teachers", upload, row)


def delete_teacher(ctx: AppContext, session: Session, tenant: str, teacher_id: str) -> None:
    """Delete a teacher no queued or running job needs (409 otherwise, also when a job that
    uses it was created meanwhile).

    The row is kept, marked deleted, so finished jobs still name their teacher; it no longer
    appears in lists or lookups. The stored file goes when no live teacher shares it.
    """
    try:
        _delete_teacher(ctx, session, tenant, teacher_id)
    except IntegrityError:
        session.rollback()
        raise conflict(f"teacher {teacher_id} is used by a job created meanwhile") from None


def _delete_teacher(ctx: AppContext, session: Session, tenant: str, teacher_id: str) -> None:
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
