"""Exponential backoff with jitter, and a loop that retries a call on transient failures.

Shared by the database (:func:`cake_shared.db.retrying`) and the S3 store
(:class:`cake_shared.storage.S3Store`) so both ride out outages the same way; each says
itself which failures are worth another try and how to log one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delay(failures: int, backoff_s: float, backoff_max_s: float) -> float:
    """Seconds to wait after the ``failures``-th failure: ``min(backoff_max_s, backoff_s *
    2**(failures-1))``, half fixed and half random, so clients that lost a service together do
    not come back together."""
    full = min(backoff_max_s, backoff_s * 2 ** (failures - 1))
    return full / 2 + random.uniform(0, full / 2)


def call_with_retries(
    call: Callable[[], T],
    *,
    attempts: int,
    retryable: Callable[[BaseException], bool],
    delay: Callable[[int], float],
    sleep: Callable[[float], None],
    on_retry: Callable[[BaseException, float, int], None],
) -> T:
    """``call()``, tried up to ``attempts`` times while it fails with a ``retryable`` error.

    After the n-th failure it waits ``delay(n)`` (``on_retry(exc, delay, n)`` is told first, to
    log it); a failure that is not retryable, or the last one, is raised as it is.
    """
    failures = 0
    while True:
        try:
            return call()
        except Exception as exc:
            failures += 1
            if failures >= attempts or not retryable(exc):
                raise
            wait = delay(failures)
            on_retry(exc, wait, failures)
            sleep(wait)
