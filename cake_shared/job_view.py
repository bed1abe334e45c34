"""The job as clients see it: one serializer for ``GET /v1/jobs/{id}`` and the webhook body.

The API validates this dict against its documented response model (``api.schemas.Job``) and
the worker signs and POSTs it to the job's ``callback_url``; building it here, once, keeps the
two byte-for-byte alike without the worker importing the API. Datetimes are written the way
pydantic writes them (UTC, ``Z`` suffix), so validating and dumping again changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cake_shared.models import Job
from cake_shared.status import WebhookStatus


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``, as pydantic serializes an aware datetime."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_json(row: Job) -> dict[str, Any] | None:
    """The callback's delivery state; None for a job without ``callback_url``.

    ``waiting`` until the job ends, then ``pending`` (attempts in progress or scheduled),
    ``delivered`` or ``failed`` (given up).
    """
    if not row.callback_url:
        return None
    pending = row.webhook_status == WebhookStatus.PENDING
    return {
        "status": row.webhook_status or WebhookStatus.WAITING,
        "attempts": int(row.webhook_attempts or 0),
        "next_attempt_at": iso_utc(row.webhook_next_at) if pending else None,
    }


def job_json(row: Job) -> dict[str, Any]:
    """The Job object of the REST API (JSON-ready)."""
    error = row.error if isinstance(row.error, dict) and row.error else None
    if error is not None:
        error = {
            "code": str(error.get("code", "internal")),
            "message": str(error.get("message", "")),
        }
    return {
        "id": row.id,
        "object": "job",
        "status": row.status,
        "phase": row.phase,
        "progress": min(1.0, max(0.0, float(row.progress or 0.0))),
        "teacher_id": row.teacher_id,
        "eval_dataset_id": row.eval_dataset_id,
        "spec": row.spec or {},
        "metrics": row.metrics or {},
        "error": error,
        "attempts": row.attempts or 0,
        "metadata": row.job_metadata or {},
        "cancel_requested": bool(row.cancel_requested),
        "created_at": iso_utc(row.created_at),
        "started_at": iso_utc(row.started_at),
        "finished_at": iso_utc(row.finished_at),
        "callback_url": row.callback_url,
        "webhook": webhook_json(row),
    }
