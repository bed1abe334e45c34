"""The per-key request rate (``api.auth.RequestRate``, the ``limits`` package) and the cache of
checked keys (``cachetools``).

The rate is counted in Redis when the broker is Redis, so that N API processes allow the limit
once: two real uvicorn processes on one SQLite database and one Redis database show it. Without
Redis, or while Redis does not answer, each process counts in its own memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from api_support import TestClient, assert_problem, live_server
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from api import auth
from api.auth import LocalMovingWindow, RequestRate, shared_rate_url
from cake_shared import tenants
from cake_shared.models import Base
from cake_shared.settings import Settings

REDIS = "redis://127.0.0.1:6379"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """An empty Redis database of its own (from 15 down, as tests/worker looks), claimed with a
    marker so that a suite running beside this one takes another, flushed afterwards."""
    claim = f"cake-api-rate-{uuid.uuid4().hex}"
    chosen = None
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS}/{db}", socket_connect_timeout=2)
        try:
            if client.dbsize() == 0 and client.set("cake:api-rate:owner", claim, nx=True):
                chosen = client
                break
        except redis.ConnectionError as exc:
            pytest.skip(f"Redis is not running on 127.0.0.1:6379: {exc}")
        client.close()
    if chosen is None:
        pytest.skip("no empty Redis database to use")
    db = chosen.connection_pool.connection_kwargs["db"]
    try:
        yield f"{REDIS}/{db}"
    finally:
        chosen.flushdb()
        chosen.close()


def _key_with_rate(db_url: str, tenant: str, per_minute: int) -> str:
    """A key of ``tenant``, whose row limits it to ``per_minute`` requests."""
    engine = create_engine(db_url)
    Base.metadata.create_all(engine)
    try:
        with Session(engine) as session:
            row = tenants.get_or_create_tenant(session, tenant)
            row.requests_per_minute = per_minute
            session.commit()
            return tenants.create_key(session, tenant).secret
    finally:
        engine.dispose()


def test_the_limit_holds_across_two_api_processes_on_redis(tmp_path: Path, redis_url: str) -> None:
    limit = 5
    secret = _key_with_rate(f"sqlite:///{tmp_path / 'cake.db'}", "acme", limit)
    headers = {"Authorization": f"Bearer {secret}"}
    env = {"CAKE_BROKER_URL": redis_url}
    with live_server(tmp_path, **env) as first, live_server(tmp_path, **env) as second:
        assert first.pid != second.pid
        answers = [
            httpx.get(f"{server.url}/v1/jobs", headers=headers, timeout=30)
            for _ in range(limit)
            for server in (first, second)
        ]
    # Counted once for both processes: the first `limit` requests pass (some on each process),
    # every later one is refused. Counted per process, all 2 x limit would have passed.
    assert [r.status_code for r in answers] == [200] * limit + [429] * limit
    for refused in answers[limit:]:
        body = assert_problem(refused, 429, "rate_limited")
        assert f"limit {limit} per minute" in body["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    with redis.Redis.from_url(redis_url) as client:
        assert client.keys(f"{auth.SHARED_RATE_PREFIX}*"), "the count lives in Redis"


def test_the_in_process_app_counts_in_redis_too(make_client: Any, redis_url: str) -> None:
    """The test client runs requests on event loops of its own; the Redis count still works
    (redis.asyncio connections belong to one loop, so the limiter keeps one per loop)."""
    client: TestClient = make_client(auth_cache_s=60.0, broker_url=redis_url)
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        row = tenants.get_or_create_tenant(session, "acme")
        row.requests_per_minute = 3
        session.commit()
        secret = tenants.create_key(session, "acme").secret
    headers = {"Authorization": f"Bearer {secret}"}
    statuses = [client.get("/v1/jobs", headers=headers).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    with redis.Redis.from_url(redis_url) as server:
        assert server.keys(f"{auth.SHARED_RATE_PREFIX}*")


def test_the_rate_is_counted_in_redis_only_when_the_broker_is_redis(tmp_path: Path) -> None:
    def url(broker: str | None) -> str | None:
        return shared_rate_url(Settings(data_dir=tmp_path, broker_url=broker))

    assert url("redis://127.0.0.1:6379/3") == "async+redis://127.0.0.1:6379/3"
    assert url("rediss://cache.example:6380/0") == "async+rediss://cache.example:6380/0"
    assert url(None) is None and url("filesystem://") is None


def test_in_memory_the_window_refuses_past_the_limit_and_says_how_long() -> None:
    async def run() -> tuple[list[float], float, float]:
        rate = RequestRate()
        allowed = [await rate.take("key_a", 3) for _ in range(3)]
        return allowed, await rate.take("key_a", 3), await rate.take("key_b", 3)

    allowed, refused, other_key = asyncio.run(run())
    assert allowed == [0.0, 0.0, 0.0]
    assert 59.0 < refused <= 60.0  # until the oldest of the three leaves the 60 s window
    assert other_key == 0.0  # per key
    assert asyncio.run(RequestRate().take("key_a", 0)) == 0.0  # 0: no limit


def test_the_local_window_moves_with_the_clock_and_follows_a_lowered_limit() -> None:
    """``LocalMovingWindow`` on a clock of our own: room comes back exactly when the oldest
    counted request leaves the window, and a limit lowered below what was counted waits for
    enough of them to leave."""
    now = [1000.0]
    window = LocalMovingWindow(window_s=60.0, clock=lambda: now[0])
    for offset in (0.0, 10.0, 20.0):
        now[0] = 1000.0 + offset
        assert window.take("key_a", 3) == 0.0
    now[0] = 1030.0
    assert window.take("key_a", 3) == pytest.approx(30.0)  # the first leaves at 1060
    now[0] = 1060.0
    assert window.take("key_a", 3) == 0.0  # it left; this one is counted
    assert window.take("key_a", 3) == pytest.approx(10.0)  # the one of 1010 leaves at 1070
    # Lowered to 2 with three counted (1010, 1020, 1060): room once two of them have left.
    assert window.take("key_a", 2) == pytest.approx(20.0)
    assert window.take("key_b", 1) == 0.0  # per key


def test_redis_that_does_not_answer_never_fails_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing listens on port 1: the count falls back to this process's memory (the limit
    still holds per process), with one warning, not one per request."""

    async def run() -> list[float]:
        rate = RequestRate("async+redis://127.0.0.1:1/0")
        return [await rate.take("key_a", 2) for _ in range(4)]

    with caplog.at_level(logging.WARNING, logger="cake.api.auth"):
        waits = asyncio.run(run())
    assert waits[:2] == [0.0, 0.0] and all(w > 0 for w in waits[2:])
    warnings = [r for r in caplog.records if "cannot count requests in Redis" in r.message]
    assert len(warnings) == 1


def test_a_flood_of_unknown_keys_does_not_push_out_the_valid_ones(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "AUTH_CACHE_ENTRIES", 20)
    client: TestClient = make_client(auth_cache_s=60.0)
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        secret = tenants.create_key(session, "acme").secret
    good = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/jobs", headers=good).status_code == 200
    for i in range(100):
        bad = {"Authorization": f"Bearer cake_flood_{i}"}
        assert_problem(client.get("/v1/jobs", headers=bad), 401, "unauthorized")
    assert len(ctx.auth._unknown) == 20, "bounded"

    def no_database() -> Any:
        raise AssertionError("the valid key was looked up again")

    monkeypatch.setattr(ctx.auth, "sessions", no_database)
    assert client.get("/v1/jobs", headers=good).status_code == 200  # still cached


def test_checked_keys_expire_after_auth_cache_s(make_client: Any) -> None:
    client: TestClient = make_client(auth_cache_s=0.2)
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        secret = tenants.create_key(session, "acme").secret
    principal = ctx.auth.resolve(secret)
    assert ctx.auth.cached(secret) == principal
    time.sleep(0.3)
    assert ctx.auth.cached(secret) is None  # looked up again: a revoked key stops working
