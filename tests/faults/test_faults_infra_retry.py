"""The retry building blocks on their own, against real servers behind a cuttable TCP proxy:
``cake_shared.storage.S3Store`` on moto's S3 server and ``cake_shared.db.retrying`` on the local
PostgreSQL.

The retry's sleep is replaced by a hook that restores the proxy (and counts the waits), so each
outage lasts exactly until the first backoff: deterministic, and no test sleeps.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults_infra_support import TcpProxy, free_port
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from cake_shared.db import is_unavailable, make_engine, retrying
from cake_shared.settings import Settings
from cake_shared.storage import CHUNK, ObjectNotFound, Retry, S3Store

BUCKET = "cake-retry"


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    try:
        yield port
    finally:
        server.stop()


@pytest.fixture
def s3(moto_port: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[S3Store, TcpProxy]]:
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")):
        monkeypatch.setenv(name, value)
    proxy = TcpProxy(("127.0.0.1", moto_port))
    store = S3Store(
        BUCKET,
        "p",
        endpoint_url=f"http://{proxy.address}",
        region="us-east-1",
        retry=Retry(attempts=4, backoff_s=0.01, backoff_max_s=0.01),
    )
    # The store's own boto3 client: botocore must not retry behind our policy's back.
    try:
        yield store, proxy
    finally:
        proxy.close()


class RestoreOnSleep:
    """Stands in for ``time.sleep`` in a retry loop: the first wait ends the outage."""

    def __init__(self, proxy: TcpProxy) -> None:
        self.proxy = proxy
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.proxy.restore()


def test_s3_calls_ride_out_a_cut_store(s3: tuple[S3Store, TcpProxy], tmp_path: Path) -> None:
    store, proxy = s3
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(300_000))
    hook = RestoreOnSleep(proxy)
    store.sleep = hook

    proxy.cut()
    store.put_file("a/b.bin", source)  # refused, waits, then goes through
    proxy.cut()
    store.get_file("a/b.bin", tmp_path / "out.bin")
    proxy.cut()
    assert store.size("a/b.bin") == 300_000
    proxy.cut()
    assert store.list("a/") == ["a/b.bin"]
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    assert len(hook.waits) == 4, hook.waits


def test_s3_stream_resumes_where_the_connection_broke(
    s3: tuple[S3Store, TcpProxy], tmp_path: Path
) -> None:
    """A read that loses its connection mid-body reopens at the next byte: the bytes that
    come out are exactly the object, neither repeated nor missing."""
    store, proxy = s3
    data = os.urandom(40 * CHUNK + 12345)  # more than every socket buffer on the way holds
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    store.put_file("big.bin", source)
    hook = RestoreOnSleep(proxy)
    store.sleep = hook

    received = bytearray()
    stream = store.iter_range("big.bin")
    received += next(stream)
    proxy.cut()  # the open response dies under the reader
    for block in stream:
        received += block
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(hook.waits) >= 1

    hook.waits.clear()
    tail = b"".join(store.iter_range("big.bin", start=CHUNK + 5, end=2 * CHUNK + 9))
    assert tail == data[CHUNK + 5 : 2 * CHUNK + 10] and hook.waits == []


class TruncatingS3:
    """A stand-in for boto3's S3 client whose ``get_object`` bodies are real botocore
    ``StreamingBody`` objects: the first one ends ``cut`` bytes in although its Content-Length
    promises the whole range (a connection closed mid-body), the later ones are whole."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data, self.cut = data, cut
        self.ranges: list[str | None] = []

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
        from botocore.response import StreamingBody

        self.ranges.append(Range)
        start, end = 0, len(self.data) - 1
        if Range is not None:
            first, _, last = Range.removeprefix("bytes=").partition("-")
            start, end = int(first), int(last) if last else end
        whole = self.data[start : end + 1]
        sent = whole[: self.cut] if len(self.ranges) == 1 else whole
        return {"Body": StreamingBody(io.BytesIO(sent), len(whole))}


def test_s3_stream_resumes_after_a_body_that_ended_early(tmp_path: Path) -> None:
    """botocore raises ``IncompleteReadError`` when a body ends before its Content-Length (how
    newer releases report a connection cut mid-body): the read resumes at the next byte."""
    from botocore.exceptions import IncompleteReadError

    from cake_shared.storage import is_transient

    assert is_transient(IncompleteReadError(actual_bytes=1, expected_bytes=2))
    data = os.urandom(3 * CHUNK + 777)
    cut = CHUNK + 123
    store = S3Store(BUCKET, region="us-east-1", retry=Retry(attempts=3, backoff_s=0.01))
    fake = TruncatingS3(data, cut)
    store.client = fake
    waits: list[float] = []
    store.sleep = waits.append
    assert b"".join(store.iter_range("obj")) == data
    assert fake.ranges == [None, f"bytes={cut}-"] and len(waits) == 1

    fake = TruncatingS3(data, 10)
    store.client = fake
    waits.clear()
    assert b"".join(store.iter_range("obj", start=5, end=CHUNK)) == data[5 : CHUNK + 1]
    assert fake.ranges == [f"bytes=5-{CHUNK}", f"bytes=15-{CHUNK}"] and len(waits) == 1


def test_s3_errors_that_are_not_outages_are_not_retried(s3: tuple[S3Store, TcpProxy]) -> None:
    store, proxy = s3
    hook = RestoreOnSleep(proxy)
    store.sleep = hook
    with pytest.raises(ObjectNotFound):
        store.get_file("missing", "/dev/null")
    assert store.size("missing") is None
    with pytest.raises(ObjectNotFound):
        list(store.iter_range("missing"))
    assert hook.waits == []


def test_s3_outage_longer_than_the_budget_raises(s3: tuple[S3Store, TcpProxy]) -> None:
    """The caller gets the error after ``attempts`` tries (the worker then hands the job back
    for another attempt)."""
    store, proxy = s3
    waits: list[float] = []
    store.sleep = waits.append
    proxy.cut()
    with pytest.raises(Exception) as info:
        store.size("anything")
    assert "Could not connect" in str(info.value)
    assert len(waits) == store.retry.attempts - 1


def test_s3_call_on_a_dead_endpoint_makes_exactly_our_attempts(
    s3: tuple[S3Store, TcpProxy],
) -> None:
    """botocore's own retries are off: one store call makes ``Retry.attempts`` HTTP requests,
    not ``attempts`` x botocore's (7 x 3 = 21 with the defaults before)."""
    store, proxy = s3
    sent: list[str] = []
    store.client.meta.events.register(
        "before-send.s3", lambda request, **_: sent.append(request.method)
    )
    store.sleep = lambda _seconds: None
    proxy.cut()
    with pytest.raises(Exception, match="Could not connect"):
        store.size("anything")
    assert len(sent) == store.retry.attempts == 4, sent

    sent.clear()
    proxy.restore()
    assert store.size("anything") is None  # a 404: one request, never retried
    assert len(sent) == 1, sent


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        yield proxy
    finally:
        proxy.close()


def test_database_retrying_rides_out_a_dropped_connection(pg_proxy: TcpProxy) -> None:
    """A pooled connection dies (the proxy drops it) and new ones are refused: ``retrying``
    waits and the statement then runs on a fresh connection."""
    engine = make_engine(f"postgresql://postgres@{pg_proxy.address}/test")
    try:
        with engine.connect() as conn:  # a connection now sits in the pool
            assert conn.execute(text("SELECT 1")).scalar() == 1
        hook = RestoreOnSleep(pg_proxy)
        pg_proxy.cut()

        def query() -> Any:
            with engine.connect() as conn:
                return conn.execute(text("SELECT 2")).scalar()

        assert retrying("a test query", query, Settings(), sleep=hook) == 2
        assert len(hook.waits) == 1
    finally:
        engine.dispose()


def test_database_retrying_gives_up_and_ignores_real_errors(pg_proxy: TcpProxy) -> None:
    engine = make_engine(f"postgresql://postgres@{pg_proxy.address}/test")
    try:
        waits: list[float] = []
        pg_proxy.cut()
        with pytest.raises(OperationalError) as info:
            retrying(
                "a test query", lambda: engine.connect(), Settings(), attempts=3, sleep=waits.append
            )
        assert is_unavailable(info.value) and len(waits) == 2
        pg_proxy.restore()

        def violate() -> None:
            with engine.begin() as conn:
                conn.execute(text("CREATE TEMP TABLE t (x int PRIMARY KEY)"))
                conn.execute(text("INSERT INTO t VALUES (1), (1)"))

        waits.clear()
        with pytest.raises(IntegrityError):
            retrying("a bad statement", violate, Settings(), sleep=waits.append)
        assert waits == []
    finally:
        engine.dispose()
