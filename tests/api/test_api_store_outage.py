"""An object store that cannot be reached: the API answers 503 ``not_ready`` (retryable), not 500.

The store is an S3 endpoint on a port where nothing listens (connections are refused at once)
and one try per call, so the test does not wait through the production retry budget.
"""

from __future__ import annotations

import socket

import pytest
from api_support import BundledTeacher, TestClient, assert_problem, upload_teacher


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


@pytest.fixture
def outage_client(make_client, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    client: TestClient = make_client(
        store_url="s3://bucket/prefix",
        s3_endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        store_retry_attempts=1,
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
