"""Fixtures of the end-to-end tests: the local PostgreSQL and Redis (as `scripts/services.sh`
starts them), an S3 server (moto's server mode) and the split deployment on top of them.

A missing service fails the tests with a message that says how to start it; nothing here is
skipped. Helpers live in ``e2e_support``.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2e_support import (
    S3,
    S3_BUCKET,
    S3_PREFIX,
    CakeProcess,
    Deployment,
    free_port,
    service_env,
    wait_for,
)
from postgres_support import fresh_database

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT_S = 120  # each process: imports (torch in the worker) on a loaded 2-core machine
HOW_TO_START = "start the local services with `bash scripts/services.sh` (`.ci/run` does)"


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh database of its own on the local PostgreSQL, dropped afterwards."""
    with fresh_database("cake_e2e", missing="fail", hint=HOW_TO_START) as url:
        yield url


@pytest.fixture(scope="module")
def redis_db() -> Iterator[tuple[str, Any]]:
    """(URL, client) of a Redis database of its own on the local server: an empty one, flushed
    and marked as taken at the start (other suites look for empty ones), flushed at the end."""
    import redis

    claim = f"cake-e2e-{uuid.uuid4().hex}"
    chosen = None
    for db in range(1, 16):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=3)
        try:
            if client.dbsize() == 0 and client.set("cake:e2e:owner", claim, nx=True):
                chosen = client
                break
        except redis.ConnectionError as exc:
            pytest.fail(f"Redis does not answer on 127.0.0.1:6379 ({exc}); {HOW_TO_START}")
        client.close()
    if chosen is None:
        pytest.fail("Redis on 127.0.0.1:6379 has no empty database (1..15) for the e2e tests")
    chosen.flushdb()
    chosen.set("cake:e2e:owner", claim)
    db = chosen.connection_pool.connection_kwargs["db"]
    try:
        yield f"redis://127.0.0.1:6379/{db}", chosen
    finally:
        chosen.flushdb()
        chosen.close()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """A real S3-compatible server (moto's server mode) on a free port, with a bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=S3_BUCKET)
        yield S3(endpoint, client)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_db: tuple[str, Any],
    s3: S3,
) -> Iterator[Deployment]:
    """``cake db upgrade``, then ``cake serve --no-worker`` and a separate ``cake worker``, all
    on PostgreSQL, Redis and S3 through the same environment."""
    root = tmp_path_factory.mktemp("deployment")
    redis_url, redis_client = redis_db
    env = service_env(
        CAKE_DATA_DIR=str(root / "data"),
        CAKE_DATABASE_URL=postgres_url,
        CAKE_BROKER_URL=redis_url,
        CAKE_STORE_URL=f"s3://{S3_BUCKET}/{S3_PREFIX}",
        CAKE_S3_ENDPOINT_URL=s3.endpoint,
        **AWS_ENV,
    )
    migrate = subprocess.run(
        [sys.executable, "-m", "cake_cli.main", "db", "upgrade"],
        env=env,
        cwd=str(root),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    assert migrate.returncode == 0, f"cake db upgrade failed:\n{migrate.stdout}{migrate.stderr}"
    assert "upgraded to head" in migrate.stdout, migrate.stdout

    port = free_port()
    api = CakeProcess(["serve", "--no-worker", "--port", str(port)], env, root / "api.log", root)
    worker = CakeProcess(
        ["worker", "--queues", "cpu,gpu", "--concurrency", "1"], env, root / "worker.log", root
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        api.wait_http(f"http://127.0.0.1:{port}/readyz", START_TIMEOUT_S)

        def worker_ready() -> bool:
            worker.check_running()
            return " ready." in worker.log()

        wait_for(worker_ready, START_TIMEOUT_S, "cake worker to be ready", interval=0.25)
        yield Deployment(
            str(client.base_url).rstrip("/"),
            client,
            api,
            worker,
            postgres_url,
            redis_client,
            s3,
        )
    finally:
        client.close()
        worker.stop()
        api.stop()
