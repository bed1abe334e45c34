"""The one retry policy (``cake_shared.retry``) on its own: the delay formula every retry
shares, and the tenacity loop the database and the store call."""

from __future__ import annotations

import pytest

from cake_shared import webhooks
from cake_shared.retry import backoff_delay, call_with_retries
from cake_shared.settings import Settings


def test_backoff_doubles_is_capped_and_jittered_within_its_range() -> None:
    for failures, nominal in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 20.0), (30, 20.0)):
        delays = [backoff_delay(failures, 1.0, 20.0) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in delays), (failures, delays)
        assert len(set(delays)) > 1  # jittered


def test_webhook_delays_never_come_before_the_documented_one() -> None:
    settings = Settings(webhook_backoff_s=10.0, webhook_backoff_max_s=1800.0)
    for attempt, nominal in ((1, 10.0), (2, 20.0), (3, 40.0), (20, 1800.0)):
        delays = [webhooks.backoff_s(attempt, settings) for _ in range(200)]
        assert all(nominal <= d <= nominal * 1.2 for d in delays), (attempt, delays)


def test_call_with_retries_tries_transient_failures_then_raises_the_error_itself() -> None:
    calls: list[int] = []
    waits: list[float] = []
    told: list[tuple[str, int]] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "up"

    def retry(what: BaseException, delay: float, failures: int) -> None:
        told.append((str(what), failures))

    kwargs = {
        "retryable": lambda exc: isinstance(exc, ConnectionError),
        "delay": lambda n: 0.5 * n,
        "sleep": waits.append,
        "on_retry": retry,
    }
    assert call_with_retries(flaky, attempts=5, **kwargs) == "up"
    assert waits == [0.5, 1.0] and told == [("down", 1), ("down", 2)]

    calls.clear()
    waits.clear()
    with pytest.raises(ConnectionError):  # the last failure as it is, not tenacity's RetryError
        call_with_retries(flaky, attempts=2, **kwargs)
    assert len(calls) == 2 and waits == [0.5]

    def wrong() -> None:
        calls.append(1)
        raise ValueError("bad request")

    calls.clear()
    with pytest.raises(ValueError):
        call_with_retries(wrong, attempts=5, **kwargs)
    assert len(calls) == 1
