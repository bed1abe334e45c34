"""The one retry policy: how long to wait after a failure, and a loop that retries on tenacity.

Every retry in the project goes through here, so they all back off the same way:

- the database (:func:`cake_shared.db.retrying`) and the S3 store
  (:class:`cake_shared.storage.S3Store`) call :func:`call_with_retries` in-process, and so
  does a job's MLflow logging (:mod:`worker.mlflow_log`), inside a time budget;
- webhook deliveries (:mod:`cake_shared.webhooks`) are retried across time through the
  database (each attempt is a row update, not a sleeping thread), so they share only the
  delay: :func:`backoff_delay`;
- the client SDK (:mod:`cake_client._http`) keeps its own loop (it retries on HTTP statuses
  and honours ``Retry-After``), and computes its computed delay with :func:`backoff_delay` too.

Standard library and tenacity only: the client SDK ships in the same wheel and imports this
module, and it must stay light (``tests/test_status.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

import tenacity

__all__ = ["EQUAL_JITTER", "backoff_delay", "call_with_retries"]

T = TypeVar("T")

#: The delay drawn between half and all of the nominal one ("equal jitter"): clients that lost
#: a service together do not come back together, and none waits longer than the nominal delay.
EQUAL_JITTER = (0.5, 1.0)


def backoff_delay(
    failures: int,
    backoff_s: float,
    backoff_max_s: float,
    spread: tuple[float, float] = EQUAL_JITTER,
) -> float:
    """Seconds to wait after the ``failures``-th failure (1-based).

    The nominal delay is ``min(backoff_max_s, backoff_s * 2**(failures-1))``: doubling, so a
    long outage costs few tries, and capped, so a recovered service is noticed soon. It is
    scaled by a random factor in ``spread`` (``(low, high)``), so callers that failed together
    spread out; :data:`EQUAL_JITTER` unless a caller documents another range (webhooks promise
    never to come earlier than the nominal delay).
    """
    nominal = min(backoff_max_s, backoff_s * 2 ** max(0, failures - 1))
    low, high = spread
    return nominal * random.uniform(low, high)


class _WaitFor(tenacity.wait.wait_base):
    """tenacity's wait strategy from our ``delay(failures)`` function."""

    def __init__(self, delay: Callable[[int], float]) -> None:
        self.delay = delay

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


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
    log it); a failure that is not retryable, or the last one, is raised as it is (not wrapped
    in tenacity's ``RetryError``: callers map store and database errors themselves). ``sleep``
    is a parameter so that tests can end an outage on the first wait instead of sleeping.
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if exc is not None:
            on_retry(exc, wait, state.attempt_number)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=_WaitFor(delay),
        retry=tenacity.retry_if_exception(retryable),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(call)
