"""An object store that cannot be reached: the API answers 503 ``not_ready`` (retryable), not 500,
and within its own short store budget (``CAKE_API_STORE_RETRY_*``), not the workers' minute.

The store is an S3 endpoint on a port where nothing listens (connections are refused at once),
or one that accepts each connection and closes it (so the tries can be counted).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from api_support import (
    BundledTeacher,
    FakeQueue,
    TestClient,
    assert_problem,
    make_settings,
    upload_teacher,
)
from store_endpoint_support import ClosingEndpoint

from cake_shared.services import Services
from cake_shared.storage import S3Store, api_retry_from_settings, retry_from_settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def outage_client(make_client, aws_credentials: None) -> TestClient:
    client: TestClient = make_client(
        store_url="s3://bucket/prefix",
        s3_endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        api_store_retry_attempts=1,
    )
    return client


def test_upload_while_the_store_is_unreachable_is_503(
    outage_client: TestClient, wine: BundledTeacher
) -> None:
    response = upload_teacher(outage_client, wine.path, [13])
    body = assert_problem(response, 503, "not_ready")
    assert response.headers["retry-after"] == "5"
    assert "object store is unavailable" in body["detail"]
    assert outage_client.get("/v1/teachers").json()["data"] == []  # nothing half-created


def test_the_api_answers_503_within_its_short_budget_and_workers_keep_the_long_one(
    make_client, aws_credentials: None, wine: BundledTeacher, tmp_path: Path
) -> None:
    """One settings object, two processes' budgets: the API (``create_app``) tries a store call
    ``CAKE_API_STORE_RETRY_ATTEMPTS`` times (default 3, at most 1.5 s of waits) and answers
    503; a worker's services (``cake worker`` builds them with ``Services.from_settings``)
    try the same call ``CAKE_STORE_RETRY_ATTEMPTS`` times (7 by default, here 5 with short
    waits so that the test need not sit through a minute)."""
    with ClosingEndpoint() as endpoint:
        store = {"store_url": "s3://bucket/prefix", "s3_endpoint_url": endpoint.url}
        worker_budget = {"store_retry_attempts": 5, "store_retry_backoff_s": 0.01}
        client: TestClient = make_client(**store, **worker_budget)
        settings = client.app.state.ctx.settings
        api_store = client.app.state.ctx.store
        assert isinstance(api_store, S3Store)
        assert api_store.retry == api_retry_from_settings(settings)
        assert (api_store.retry.attempts, api_store.retry.connect_timeout_s) == (3, 2.0)

        started = time.monotonic()
        with open(wine.eval_path, "rb") as fh:  # a data set: checked without torch, then stored
            response = client.post("/v1/datasets", files={"file": (wine.eval_path.name, fh)})
        elapsed = time.monotonic() - started
        body = assert_problem(response, 503, "not_ready")
        assert "object store is unavailable" in body["detail"]
        assert endpoint.connections == 3  # the one store call (does the object exist?), 3 tries
        # Its waits are at most 0.5 + 1.0 s; the workers' default budget waits 25 s at least.
        assert elapsed < 5, elapsed

        worker_settings = make_settings(tmp_path / "worker", **store, **worker_budget)
        worker = Services.from_settings(worker_settings, queue=FakeQueue())
        try:
            assert worker.store.retry == retry_from_settings(worker.settings)
            assert worker.store.retry.attempts == 5
            with pytest.raises(Exception) as failure:
                worker.store.exists("datasets/" + "0" * 64)
            assert "Connection was closed" in str(failure.value)
            assert endpoint.connections == 3 + 5
            # A prefork child rebuilds its store with the same (long) budget.
            worker.after_fork()
            assert worker.store.retry.attempts == 5
        finally:
            worker.close()
    assert client.get("/v1/datasets").json()["data"] == []  # nothing half-created
