"""A job's log: appending, and reading it in order after a cursor (pages and the live stream).

Events are ordered by ``seq`` (per job, gap-free); clients hold event ids, so a cursor id is
turned into its ``seq`` first.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import validation_error
from cake_shared.job_events import add_event as shared_add_event
from cake_shared.models import Job, JobEvent


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


def after_seq(session: Session, job_id: str, after: str | None) -> int:
    """The ``seq`` of the cursor event (0 without one); 422 for an id not in this job's log,
    which the client must hear about rather than silently get the whole log again."""
    if not after:
        return 0
    seq = session.scalar(
        select(JobEvent.seq).where(JobEvent.job_id == job_id, JobEvent.id == after)
    )
    if seq is None:
        raise validation_error(["query", "after"], f"no event {after!r} in job {job_id}")
    return int(seq)


def events_after(session: Session, job_id: str, seq: int, limit: int) -> list[JobEvent]:
    """Up to ``limit`` events after ``seq``, oldest first."""
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > seq)
            .order_by(JobEvent.seq)
            .limit(limit)
        )
    )


def page_after(session: Session, job_id: str, seq: int, limit: int) -> tuple[list[JobEvent], bool]:
    """A page of events after ``seq`` and whether more follow (one extra row tells)."""
    rows = events_after(session, job_id, seq, limit + 1)
    return rows[:limit], len(rows) > limit


def poll(session: Session, job_id: str, seq: int, limit: int) -> tuple[str | None, list[JobEvent]]:
    """The job's status (None once deleted), then up to ``limit`` events after ``seq``: read in
    this order, so a finished status guarantees every event written before it is in the list."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status, events_after(session, job_id, seq, limit)
