"""The building blocks every job write shares: the job's event log and the helpers the state
transitions reuse (JSON-safe values, the UTC ``now`` parameter, the webhook schedule, the publish
after commit).

They live apart from :mod:`cake_shared.jobs` (the worker's claim/progress/finish transitions)
and :mod:`cake_shared.job_sweep` (the sweeper's recovery of stale and lost jobs) so that both
can use them without importing each other; ``cake_shared.jobs`` re-exports the public names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, literal
from sqlalchemy.orm import Session

from cake_shared.ids import new_id
from cake_shared.models import Job, JobEvent, UTCDateTime, utcnow
from cake_shared.queue_names import queue_or_fallback
from cake_shared.status import WebhookStatus

if TYPE_CHECKING:
    from cake_shared.services import Services

log = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None: PostgreSQL's JSON rejects NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, str | int | bool) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        return json_safe(value.item())
    return str(value)


def add_event(
    session: Session,
    job_id: str,
    type: str,
    message: str,
    level: str = "info",
    data: Mapping[str, Any] | None = None,
) -> JobEvent:
    """Append one event to the job's log (in the caller's transaction)."""
    event = JobEvent(
        id=new_id("event"),
        job_id=job_id,
        created_at=utcnow(),
        level=level,
        type=type,
        message=message,
        data=json_safe(dict(data or {})),
    )
    session.add(event)
    return event


def now_param(now: datetime) -> Any:
    """``now`` as a bound value of the models' UTC type (so SQLite stores the same format)."""
    return literal(now, type_=UTCDateTime())


def webhook_due(now: datetime) -> dict[str, Any]:
    """Update values that schedule the job's callback, when it has one, in the same UPDATE as
    its terminal transition, so the delivery (``cake_shared.webhooks``) cannot be lost."""
    has_callback = Job.callback_url.is_not(None)
    return {
        "webhook_status": case(
            (has_callback, literal(WebhookStatus.PENDING.value)), else_=Job.webhook_status
        ),
        "webhook_next_at": case((has_callback, now_param(now)), else_=Job.webhook_next_at),
    }


def enqueue_after_commit(
    services: Services,
    job_id: str,
    queue: str,
    enqueue: Callable[[str, str], None] | None,
    countdown: float | None = None,
) -> None:
    """Publish after the commit to ``services.queue`` (or ``enqueue``), to be run in
    ``countdown`` seconds if given; a failed publish is only logged: the job is queued in the
    database and :func:`cake_shared.job_sweep.requeue_lost_queued_jobs` publishes it again later."""
    if enqueue is None:

        def enqueue(job_id: str, queue: str) -> None:
            services.queue.enqueue(job_id, queue, countdown=countdown)

    try:
        enqueue(job_id, queue_or_fallback(queue))
    except Exception as exc:  # the broker may be down; the sweeper retries
        log.warning("could not enqueue %s on %s: %s", job_id, queue, exc)
