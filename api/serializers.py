"""ORM rows -> response bodies: the one place that decides what a client sees of each row.

Each serializer builds the documented response model (``api.schemas``) and dumps it as JSON, so
a body that would not match the OpenAPI document fails here, in tests, rather than in a client.
Routes that return these dicts unchanged (``JSONResponse``) skip a second validation.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from api import schemas
from cake_core import __version__
from cake_shared.job_view import iso_utc, job_json
from cake_shared.models import Artifact, Dataset, Job, JobEvent, Teacher


def teacher_out(row: Teacher) -> dict[str, Any]:
    """The Teacher object; the storage key and tenant stay internal."""
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
    """The Dataset object; the storage key and tenant stay internal."""
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


def job_etag(job_id: str, updated_at: datetime | None) -> str:
    """The ``ETag`` of ``GET /v1/jobs/{id}``, from the row's ``updated_at`` alone.

    Every write to a job row bumps ``updated_at`` (the column's ``onupdate``: the ORM's flushes
    and every ``update(Job)`` of ``cake_shared.jobs``, webhooks and the sweeper alike), and the
    body is built from that row only, so an unchanged ``updated_at`` means an unchanged body:
    a poll can be answered 304 from this one column, without loading or serialising the job.
    Heartbeats, which change nothing a client sees, write it back unchanged.
    The tag is weak (the same job, not the same bytes) and folds in the service version, so
    a body whose shape changed with an upgrade is never confirmed as current.
    """
    stamp = iso_utc(updated_at) or ""  # in UTC: the same tag whatever the session's time zone
    digest = hashlib.blake2b(f"{job_id}|{stamp}|{__version__}".encode(), digest_size=12).hexdigest()
    return f'W/"{digest}"'


def event_out(row: JobEvent) -> dict[str, Any]:
    """One entry of a job's log, as listed and as streamed (the SSE ``data:`` line)."""
    return schemas.Event(
        id=row.id,
        created_at=row.created_at,
        level=row.level,
        type=row.type,
        message=row.message,
        data=row.data or {},
    ).model_dump(mode="json")


def artifact_out(row: Artifact) -> dict[str, Any]:
    """An artifact's name, size, hash and type; where it is stored stays internal."""
    return schemas.Artifact(
        name=row.name, size_bytes=row.size_bytes, sha256=row.sha256, content_type=row.content_type
    ).model_dump(mode="json")


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """The list envelope of every collection: the cursor is the last id of a full page."""
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_after": data[-1]["id"] if has_more and data else None,
    }
