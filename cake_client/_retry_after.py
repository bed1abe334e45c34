"""``Retry-After`` parsing, below both the transport and the exceptions.

Two modules need it: :mod:`cake_client._http` (how long to sleep before a retry) and
:mod:`cake_client.errors` (``RateLimited.retry_after``). Living here, with the standard library
only, it lets ``_http`` import ``errors`` without ``errors`` importing ``_http`` back.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)
