"""Fixtures for the worker tests (helpers live in ``worker_support``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from postgres_support import fresh_database
from worker_support import S3_BUCKET, Service, configure_service, free_port

from cake_shared.services import Services


@pytest.fixture
def opened() -> Iterator[list[Services]]:
    """The services the test's fixtures built, closed when it ends (``postgres_url`` closes
    them before it drops its database)."""
    built: list[Services] = []
    try:
        yield built
    finally:
        for ctx in built:
            ctx.close()


@pytest.fixture
def make_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Services]
) -> Iterator[Callable[..., Service]]:
    """Configure the service under ``tmp_path`` (extra ``CAKE_*`` variables as keywords).

    Jobs run on one CPU thread: these tiny jobs are dominated by thread start-up and contention
    on a shared machine, not by arithmetic.
    """
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    try:
        yield lambda **env: configure_service(monkeypatch, tmp_path / "data", opened, **env)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def service(make_service: Callable[..., Service]) -> Service:
    """SQLite, a local store and the filesystem broker, all under ``tmp_path``."""
    return make_service()


@pytest.fixture
def postgres_url(opened: list[Services]) -> Iterator[str]:
    """A fresh database on the local PostgreSQL (127.0.0.1:5432), dropped afterwards."""
    with fresh_database("cake_worker", missing="skip") as url:
        try:
            yield url
        finally:
            for ctx in opened:  # close pooled connections before the drop
                ctx.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(request: pytest.FixtureRequest) -> dict[str, str]:
    """The ``CAKE_*`` variables of one database: SQLite (the default, none) or PostgreSQL."""
    if request.param == "postgresql":
        return {"CAKE_DATABASE_URL": request.getfixturevalue("postgres_url")}
    return {}


@pytest.fixture
def any_service(any_database: dict[str, str], make_service: Callable[..., Service]) -> Service:
    """The same test on SQLite and on PostgreSQL: the claim and sweep SQL must hold on both."""
    return make_service(**any_database)


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on a free port, with the bucket
    ``S3_BUCKET``; its URL."""
    server_mod = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        server.stop()
