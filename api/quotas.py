"""The API's side of the per-tenant limits (``cake_shared.limits``): checked when something is
created. Concurrent creates may overshoot a limit by what is in flight at that moment; nothing
already accepted is ever dropped."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import ApiError
from cake_shared.limits import count_jobs, limits_for, stored_bytes
from cake_shared.settings import Settings
from cake_shared.status import JobStatus

#: Retry-After for a full queue: about how long a short job takes to make room.
QUEUE_FULL_RETRY_S = 30


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def check_queued_jobs(session: Session, settings: Settings, tenant: str) -> None:
    """429 when the tenant already has as many queued jobs as its limit."""
    limit = limits_for(session, settings, tenant).max_queued_jobs
    if limit <= 0:
        return
    queued = count_jobs(session, tenant, JobStatus.QUEUED)
    if queued >= limit:
        raise ApiError(
            429,
            "rate_limited",
            f"{queued} jobs are queued for this tenant, its limit; retry when some have started",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
        )


def check_storage(session: Session, settings: Settings, tenant: str, incoming: int) -> None:
    """409 when storing ``incoming`` more bytes would take the tenant over its quota."""
    limit = limits_for(session, settings, tenant).max_stored_bytes
    if limit <= 0:
        return
    used = stored_bytes(session, tenant)
    if used + incoming > limit:
        raise ApiError(
            409,
            "conflict",
            f"storage quota exceeded: this tenant stores {_mib(used)} of {_mib(limit)} and the "
            f"upload is {_mib(incoming)}; delete teachers, data sets or finished jobs first",
        )
