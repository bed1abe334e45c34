"""Long polling: ``GET /v1/jobs/{id}?wait=N`` answers when the job changes or after N seconds.

Requests run on threads against one ``TestClient`` (one event loop, as under uvicorn); a test
makes its change only once the app's watcher counts the request among its waiters, so nothing
here depends on sleeping for the right time. Changes come the way they do in production: the
API's own cancel and delete, and a worker's writes through ``cake_shared.jobs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from api_support import BundledTeacher, TestClient, assert_problem, new_job

import api.routes.jobs
from cake_shared import jobs, tenants
from cake_shared.status import JobPhase, JobStatus


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> Iterator[TestClient]:
    with make_client() as entered:  # one portal, one event loop for every request
        yield entered


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=16) as executor:
        yield executor


@pytest.fixture
def job_id(client: TestClient, wine: BundledTeacher) -> str:
    return new_job(client, wine, {})


def _watch(client: TestClient) -> Any:
    return client.app.state.ctx.job_watch  # type: ignore[attr-defined]


def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _long_poll(
    pool: ThreadPoolExecutor,
    client: TestClient,
    job_id: str,
    wait: float,
    if_none_match: str | None = None,
    headers: dict[str, str] | None = None,
) -> Future[tuple[Any, float]]:
    sent = dict(headers or {})
    if if_none_match is not None:
        sent["If-None-Match"] = if_none_match

    def call() -> tuple[Any, float]:
        started = time.monotonic()
        response = client.get(f"/v1/jobs/{job_id}", params={"wait": wait}, headers=sent)
        return response, time.monotonic() - started

    return pool.submit(call)


def _waiting(client: TestClient, count: int) -> None:
    _until(lambda: _watch(client).waiting == count, f"{count} waiting request(s)")


def test_a_change_answers_every_waiting_client_with_the_new_state(
    client: TestClient, job_id: str, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = client.get(f"/v1/jobs/{job_id}")
    tag = first.headers["etag"]
    with_tag = [_long_poll(pool, client, job_id, 30, tag) for _ in range(5)]
    without_tag = [_long_poll(pool, client, job_id, 30) for _ in range(5)]
    _waiting(client, 10)
    built: list[str] = []
    real_job_out = api.routes.jobs.job_out
    monkeypatch.setattr(
        api.routes.jobs, "job_out", lambda row: built.append(row.id) or real_job_out(row)
    )
    changed_at = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    for future in with_tag + without_tag:
        response, _ = future.result(timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == JobStatus.CANCELED
        assert response.headers["etag"] != tag
    # The watcher's round is 0.25 s on SQLite: every client hears of the change at once.
    assert time.monotonic() - changed_at < 2.0
    assert _watch(client).waiting == 0
    # One body for the cancel's answer, one for the first woken client; the other nine are
    # answered from it, with the stamp the watcher woke them with.
    assert built == [job_id, job_id]


def test_a_worker_write_wakes_the_waiter_and_a_heartbeat_does_not(
    client: TestClient, job_id: str, pool: ThreadPoolExecutor
) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    tag = client.get(f"/v1/jobs/{job_id}").headers["etag"]
    token = jobs.claim_job(ctx, job_id, "worker-1")
    assert token is not None
    claimed = _long_poll(pool, client, job_id, 30, tag).result(timeout=10)[0]
    assert claimed.status_code == 200 and claimed.json()["status"] == JobStatus.RUNNING
    tag = claimed.headers["etag"]

    waiting = _long_poll(pool, client, job_id, 30, tag)
    _waiting(client, 1)
    rounds = _watch(client).rounds
    assert jobs.heartbeat(ctx, job_id, token)
    _until(lambda: _watch(client).rounds >= rounds + 2, "two rounds after the heartbeat")
    assert not waiting.done(), "a heartbeat changes nothing a client sees"
    assert jobs.update_progress(ctx, job_id, token, JobPhase.TRAINING, 0.4, {"loss": 0.25})
    response = waiting.result(timeout=10)[0]
    assert response.status_code == 200
    body = response.json()
    assert (body["phase"], body["progress"], body["metrics"]) == ("training", 0.4, {"loss": 0.25})


def test_no_change_within_wait_is_304_with_a_tag_and_the_job_without(
    client: TestClient, job_id: str, pool: ThreadPoolExecutor
) -> None:
    first = client.get(f"/v1/jobs/{job_id}")
    tag = first.headers["etag"]
    conditional = _long_poll(pool, client, job_id, 0.6, tag)
    plain = _long_poll(pool, client, job_id, 0.6)
    response, seconds = conditional.result(timeout=10)
    assert response.status_code == 304 and response.content == b""
    assert response.headers["etag"] == tag
    assert seconds >= 0.6
    response, seconds = plain.result(timeout=10)
    assert response.status_code == 200
    assert response.json() == first.json() and response.headers["etag"] == tag
    assert seconds >= 0.6


def test_what_is_answered_at_once(
    client: TestClient, job_id: str, pool: ThreadPoolExecutor
) -> None:
    """A stale tag (the client is behind), a job that has ended (for a client without a tag),
    an unknown job: none of them waits."""
    stale = _long_poll(pool, client, job_id, 30, 'W/"stale"').result(timeout=10)[0]
    assert stale.status_code == 200 and stale.json()["status"] == JobStatus.QUEUED
    client.post(f"/v1/jobs/{job_id}/cancel")
    ended, seconds = _long_poll(pool, client, job_id, 30).result(timeout=10)
    assert ended.status_code == 200 and ended.json()["status"] == JobStatus.CANCELED
    assert seconds < 5
    unknown = _long_poll(pool, client, "job_unknown", 30).result(timeout=10)[0]
    assert_problem(unknown, 404, "not_found")
    assert _watch(client).waiting == 0


def test_a_deleted_job_answers_its_waiters_404(
    client: TestClient, job_id: str, pool: ThreadPoolExecutor
) -> None:
    canceled = client.post(f"/v1/jobs/{job_id}/cancel")
    tag = client.get(f"/v1/jobs/{job_id}").headers["etag"]
    assert canceled.json()["status"] == JobStatus.CANCELED
    waiting = _long_poll(pool, client, job_id, 30, tag)
    _waiting(client, 1)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert_problem(waiting.result(timeout=10)[0], 404, "not_found")


def test_another_tenants_job_is_404_at_once(
    make_client: Callable[..., TestClient], wine: BundledTeacher, pool: ThreadPoolExecutor
) -> None:
    with make_client(auth_cache_s=0.0) as client:
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        keys = {}
        with ctx.sessionmaker() as session:
            for tenant in ("acme", "other"):
                secret = tenants.create_key(session, tenant).secret
                keys[tenant] = {"Authorization": f"Bearer {secret}"}
        job_id = new_job(client, wine, keys["acme"])
        tag = client.get(f"/v1/jobs/{job_id}", headers=keys["acme"]).headers["etag"]
        for header in (None, tag, "*"):
            future = _long_poll(pool, client, job_id, 30, header, headers=keys["other"])
            response, seconds = future.result(timeout=10)
            assert_problem(response, 404, "not_found")
            assert seconds < 5
        assert _watch(client).waiting == 0


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
def test_a_wait_out_of_range_is_422(client: TestClient, job_id: str, wait: str) -> None:
    assert_problem(client.get(f"/v1/jobs/{job_id}", params={"wait": wait}), 422, "validation_error")


def test_one_read_per_round_whatever_the_number_of_waiters(
    client: TestClient, wine: BundledTeacher, pool: ThreadPoolExecutor
) -> None:
    """Ten clients on each of three jobs: the watcher reads all three stamps in one query a
    round, so its reads follow the clock, not the number of clients."""
    watch = _watch(client)
    ids = [new_job(client, wine, {}) for _ in range(3)]
    tags = {job: client.get(f"/v1/jobs/{job}").headers["etag"] for job in ids}
    futures = [_long_poll(pool, client, job, 2.0, tags[job]) for job in ids for _ in range(5)]
    _waiting(client, 15)
    rounds, started = watch.rounds, time.monotonic()
    for future in futures:
        assert future.result(timeout=10)[0].status_code == 304
    elapsed = time.monotonic() - started
    assert watch.rounds - rounds <= elapsed / watch.poll_s + 2


def test_on_postgresql_a_notification_wakes_the_waiter_before_the_round(
    make_client: Callable[..., TestClient], wine: BundledTeacher, pool: ThreadPoolExecutor
) -> None:
    """With migration 0004's trigger the database itself says which job changed: the rounds are
    set to 30 s here, so only the ``NOTIFY`` can answer the waiter within the test's bound."""
    from postgres_support import fresh_database

    from cake_cli.service import upgrade_database

    with fresh_database("cake_long_poll", missing="skip") as url:
        upgrade_database(url=url)
        with make_client(database_url=url) as client:
            watch = _watch(client)
            watch.poll_s = watch.listening_poll_s = 30.0
            job_id = new_job(client, wine, {})
            tag = client.get(f"/v1/jobs/{job_id}").headers["etag"]
            waiting = _long_poll(pool, client, job_id, 40, tag)
            _waiting(client, 1)
            _until(lambda: watch.listening, "the LISTEN connection")
            changed_at = time.monotonic()
            assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
            response = waiting.result(timeout=20)[0]
            assert response.status_code == 200
            assert response.json()["status"] == JobStatus.CANCELED
            assert time.monotonic() - changed_at < 5.0
            client.app.state.ctx.engine.dispose()  # type: ignore[attr-defined]
