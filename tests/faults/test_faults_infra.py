"""Infrastructure faults on the split deployment: the broker restarted empty, the API killed
mid-upload while clients poll, the database and the object store unreachable for a while.

Real processes throughout: ``cake serve --no-worker`` and ``cake worker`` on PostgreSQL, a
private ``redis-server`` (so it can be killed and restarted empty without touching the shared
one) and S3 (moto's server). The worker reaches PostgreSQL and S3 through TCP proxies that a
test cuts and restores (``faults_infra_support.TcpProxy``); the API reaches PostgreSQL through
the same proxy. Each test prints one line of figures (``FIGURES ...``) for docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from faults_infra_support import (
    CakeProcess,
    Outage,
    RedisServer,
    TcpProxy,
    free_port,
    job_events,
    job_row,
    kill_hard,
    service_env,
    sweep_as_another_worker,
    wait_for,
)
from postgres_support import fresh_database

from cake_client import Client

BUCKET = "cake-faults"
PREFIX = "svc"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 120
FINISHED = ("succeeded", "failed", "canceled")
#: Seconds without a heartbeat after which a running job counts as abandoned (worker setting).
HEARTBEAT_TIMEOUT_S = 6.0
#: A job of a few seconds: long enough to cut something in the middle of it.
TINY_SPEC: dict[str, Any] = {
    "synthesis": {"num_samples": 200, "steps": 5},
    "training": {"epochs": 1},
}
LONGER_SPEC: dict[str, Any] = {
    "synthesis": {"num_samples": 1000, "steps": 20, "batch_size": 100, "chunk_batches": 2},
    "training": {"epochs": 2},
}


def figures(**values: Any) -> None:
    """One greppable line per test with what it saw."""
    print("FIGURES " + json.dumps(values, sort_keys=True))


@dataclass
class Stack:
    root: Path
    database_url: str  # direct, for the test's own reads
    redis: RedisServer
    pg_proxy: TcpProxy
    s3_proxy: TcpProxy
    s3_client: Any
    api_env: dict[str, str]
    worker_env: dict[str, str]
    port: int
    api: CakeProcess | None = None
    worker: CakeProcess | None = None
    teacher_id: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def start_api(self) -> None:
        self.api = CakeProcess(
            ["serve", "--no-worker", "--port", str(self.port)],
            self.api_env,
            self.root / f"api-{time.monotonic_ns()}.log",
            self.root,
        )
        self.api.wait_http(f"{self.url}/readyz", START_TIMEOUT_S)

    def start_worker(self) -> None:
        worker = CakeProcess(
            ["worker", "--queues", "cpu,gpu", "--concurrency", "1"],
            self.worker_env,
            self.root / f"worker-{time.monotonic_ns()}.log",
            self.root,
        )
        self.worker = worker

        def ready() -> bool:
            worker.check_running()
            return " ready." in worker.log()

        wait_for(ready, START_TIMEOUT_S, "cake worker to be ready", interval=0.1)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def check_alive(self) -> None:
        for process in (self.api, self.worker):
            if process is not None:
                process.check_running()

    def logs(self) -> str:
        parts = []
        for name, process in (("api", self.api), ("worker", self.worker)):
            if process is not None:
                parts.append(f"--- {name}:\n{process.log(6000)}")
        return "\n".join(parts)

    def submit(self, http: httpx.Client, spec: dict[str, Any] | None = None) -> str:
        response = http.post(
            "/v1/jobs", json={"teacher_id": self.teacher_id, **(spec or TINY_SPEC)}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def wait_finished(self, job_id: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        """Until the job has ended and its worker is done with it (checkpoints deleted), so
        that the next test's fault does not hit this job's clean-up."""

        def done() -> dict[str, Any] | None:
            self.check_alive()
            row = job_row(self.database_url, job_id)
            if row["status"] not in FINISHED or self.checkpoints(job_id):
                return None
            return row

        try:
            return wait_for(done, timeout, f"job {job_id} to finish", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def checkpoints(self, job_id: str) -> list[str]:
        """The job's checkpoint objects, of every attempt (``jobs/<id>/attempts/<n>/...``)."""
        prefix = f"{PREFIX}/jobs/{job_id}/"
        listing = self.s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for obj in listing.get("Contents", []) if "/checkpoints/" in obj["Key"]]

    def wait_running(self, job_id: str, min_progress: float | None = None) -> dict[str, Any]:
        """Until the job runs (and has passed ``min_progress``, when given)."""

        def running() -> dict[str, Any] | None:
            self.check_alive()
            row = job_row(self.database_url, job_id)
            assert row["status"] not in FINISHED, (row, self.logs())
            ok = row["status"] == "running" and (
                min_progress is None or row["progress"] > min_progress
            )
            return row if ok else None

        return wait_for(running, JOB_TIMEOUT_S, f"job {job_id} to run", interval=0.05)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A fresh database of its own on the local PostgreSQL, dropped afterwards."""
    with fresh_database("cake_faults", missing="fail") as url:
        yield url


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, digits_teacher: Any
) -> Iterator[Stack]:
    import boto3
    from moto.server import ThreadedMotoServer

    root = tmp_path_factory.mktemp("faults-infra")
    redis = RedisServer(root / "redis.log")
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    s3_client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{moto_port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    s3_client.create_bucket(Bucket=BUCKET)
    pg_proxy = TcpProxy(("127.0.0.1", 5432))
    s3_proxy = TcpProxy(("127.0.0.1", moto_port))
    db_name = postgres_url.rsplit("/", 1)[1]
    common = {
        "CAKE_DATA_DIR": str(root / "data"),
        "CAKE_DATABASE_URL": f"postgresql://postgres@{pg_proxy.address}/{db_name}",
        "CAKE_BROKER_URL": redis.url,
        "CAKE_STORE_URL": f"s3://{BUCKET}/{PREFIX}",
        **AWS_ENV,
    }
    api_env = service_env(**common, CAKE_S3_ENDPOINT_URL=f"http://127.0.0.1:{moto_port}")
    worker_env = service_env(
        **common,
        CAKE_S3_ENDPOINT_URL=f"http://{s3_proxy.address}",
        CAKE_SWEEP_INTERVAL_S="0.5",
        CAKE_LOST_JOB_AFTER_S="1",
        CAKE_JOB_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
        CAKE_PROGRESS_INTERVAL_S="0.2",
    )
    stack = Stack(
        root, postgres_url, redis, pg_proxy, s3_proxy, s3_client, api_env, worker_env, free_port()
    )
    try:
        stack.start_api()
        stack.start_worker()
        with stack.http() as http, open(digits_teacher.path, "rb") as fh:
            response = http.post(
                "/v1/teachers",
                files={"file": ("digits.pt", fh, "application/octet-stream")},
                data={"input_shape": json.dumps(list(digits_teacher.input_shape))},
            )
        assert response.status_code == 201, response.text
        stack.teacher_id = response.json()["id"]
        yield stack
    finally:
        pg_proxy.restore()
        s3_proxy.restore()
        if stack.worker is not None:
            stack.worker.stop()
        if stack.api is not None:
            stack.api.stop()
        pg_proxy.close()
        s3_proxy.close()
        redis.stop()
        moto.stop()


def assert_ran_once(stack: Stack, job_id: str, attempts: int = 1) -> list[dict[str, Any]]:
    """Succeeded, with ``attempts`` started events and exactly one succeeded event."""
    row = job_row(stack.database_url, job_id)
    events = job_events(stack.database_url, job_id)
    types = [e["type"] for e in events]
    assert row["status"] == "succeeded", (row, types, stack.logs())
    assert row["attempts"] == attempts, (row, types)
    assert types.count("started") == attempts, types
    assert types.count("succeeded") == 1, types
    return events


# ---------------------------------------------------------------------------------------------
# 1. the broker restarted empty while jobs wait
# ---------------------------------------------------------------------------------------------
def test_redis_restarted_empty_with_jobs_queued_loses_none(stack: Stack) -> None:
    """Jobs sit in Redis (no worker runs); Redis dies and comes back empty; more jobs are
    submitted while it is down. The sweeper of the worker started afterwards publishes every
    job the database says is queued but the broker no longer holds: all succeed, once each."""
    stack.stop_worker()
    with stack.http() as http:
        before = [stack.submit(http) for _ in range(2)]
        assert stack.redis.keys("cpu"), "the jobs should be waiting in Redis"

        stack.redis.kill()
        during, post_s = [], []
        for _ in range(2):
            started = time.monotonic()
            during.append(stack.submit(http))
            post_s.append(time.monotonic() - started)
        for job_id in during:
            types = [e["type"] for e in job_events(stack.database_url, job_id)]
            assert "enqueue_delayed" in types, types
            assert job_row(stack.database_url, job_id)["status"] == "queued"
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] != "ok", ready.text

        stack.redis.restart_empty()
        assert not stack.redis.keys("cpu")
        stack.start_worker()
        jobs = before + during
        for job_id in jobs:
            stack.wait_finished(job_id)
        # Redis dies again while the worker idles: the worker reconnects and takes new jobs.
        stack.redis.restart_empty()
        after = stack.submit(http)
        stack.wait_finished(after)
        jobs.append(after)
    lost = run_twice = 0
    for job_id in jobs:
        row = job_row(stack.database_url, job_id)
        types = [e["type"] for e in job_events(stack.database_url, job_id)]
        lost += row["status"] != "succeeded"
        run_twice += types.count("started") > 1
        assert_ran_once(stack, job_id)
    assert stack.worker is not None
    republished = stack.worker.log(1 << 30).count("queued but not in the broker; published again")
    assert republished >= len(jobs) - 1, republished
    figures(
        test="redis_restarted_empty",
        redis_restarts=stack.redis.restarts,
        republished_by_sweeper=republished,
        jobs_submitted=len(jobs),
        submitted_while_down=len(during),
        post_while_down_s=round(max(post_s), 2),
        lost=lost,
        run_twice=run_twice,
    )


def test_redis_restarted_empty_while_a_job_runs(stack: Stack) -> None:
    """Redis dies and comes back empty while the worker runs a job (its message, held
    unacknowledged, is gone with it). The job finishes and is recorded once; the worker
    reconnects and takes the next job."""
    with stack.http() as http:
        running = stack.submit(http, LONGER_SPEC)
        stack.wait_running(running, min_progress=0.05)
        stack.redis.restart_empty()
        stack.wait_finished(running)
        following = stack.submit(http)
        stack.wait_finished(following)
    for job_id in (running, following):
        assert_ran_once(stack, job_id)
    figures(test="redis_restarted_empty_mid_job", jobs_submitted=2, lost=0, run_twice=0)


# ---------------------------------------------------------------------------------------------
# 2. the API killed mid-upload while clients poll
# ---------------------------------------------------------------------------------------------
class Poller:
    """Polls ``GET /v1/jobs/{id}`` in a thread: plain httpx (counting what it sees) and the
    Python client (which must ride through a restart without raising)."""

    def __init__(self, stack: Stack, job_id: str) -> None:
        self.stack, self.job_id = stack, job_id
        self.stop = threading.Event()
        self.ok = self.connection_errors = self.server_errors = 0
        self.ok_since_restart = self.client_ok_since_restart = 0
        self.restarted = threading.Event()
        self.client_errors: list[Exception] = []
        self.client_calls = 0
        self.threads = [
            threading.Thread(target=self._raw, daemon=True),
            threading.Thread(target=self._client, daemon=True),
        ]

    def __enter__(self) -> Poller:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _raw(self) -> None:
        with httpx.Client(base_url=self.stack.url, timeout=10) as http:
            while not self.stop.is_set():
                try:
                    response = http.get(f"/v1/jobs/{self.job_id}")
                except httpx.TransportError:
                    self.connection_errors += 1
                else:
                    if response.status_code == 200:
                        self.ok += 1
                        self.ok_since_restart += self.restarted.is_set()
                    elif response.status_code >= 500:
                        self.server_errors += 1
                self.stop.wait(0.05)

    def _client(self) -> None:
        with Client(self.stack.url) as client:
            while not self.stop.is_set():
                self.client_calls += 1
                try:
                    job = client.jobs.get(self.job_id)
                    assert job.id == self.job_id
                    self.client_ok_since_restart += self.restarted.is_set()
                except Exception as exc:  # recorded; the test asserts there is none
                    self.client_errors.append(exc)
                self.stop.wait(0.05)


def _multipart_upload(url: str, release: threading.Event, outcome: dict[str, Any]) -> None:
    """POST /v1/teachers with a 16 MiB file part sent in 1 MiB blocks; after 4 MiB it waits
    for ``release`` (the API is killed meanwhile), then tries to send the rest."""
    boundary = "faults-" + uuid.uuid4().hex
    block = b"\0" * (1 << 20)

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="input_shape"\r\n\r\n'
            f"[1,8,8]\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="big.pt"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for i in range(16):
            if i == 4:
                release.wait(60)
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        response = httpx.post(
            f"{url}/v1/teachers",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=60,
        )
        outcome["status"] = response.status_code
    except httpx.TransportError as exc:
        outcome["error"] = type(exc).__name__


def test_api_killed_mid_upload_while_clients_poll(stack: Stack) -> None:
    """SIGKILL of the API (and its children) while a teacher upload streams and two clients
    poll a job; the API comes back on the same port. The upload fails for its client (which
    may retry it), no trace of it is left in the teacher list, the store or the upload folder,
    the plain poller sees connection errors and then answers, and the Python client's calls
    all succeed (its retries ride through the restart)."""
    uploads = stack.root / "data" / "uploads"
    with stack.http() as http:
        job_id = stack.submit(http)
        teachers_before = http.get("/v1/teachers").json()["data"]
    stored_before = _keys(stack, "teachers/")

    release, outcome = threading.Event(), {}
    uploader = threading.Thread(target=_multipart_upload, args=(stack.url, release, outcome))
    with Poller(stack, job_id) as poller:
        wait_for(lambda: poller.ok >= 3 and poller.client_calls >= 3, 30, "pollers to start")
        uploader.start()

        def partial_upload() -> bool:
            return any(p.stat().st_size >= 2 << 20 for p in uploads.glob("upload-*"))

        wait_for(partial_upload, 30, "the upload to be half written", interval=0.05)
        assert stack.api is not None
        killed_at = time.monotonic()
        kill_hard(stack.api)
        release.set()
        uploader.join(60)
        stack.start_api()
        downtime = time.monotonic() - killed_at
        poller.restarted.set()
        wait_for(
            lambda: poller.ok_since_restart >= 3 and poller.client_ok_since_restart >= 3,
            30,
            "both pollers to get answers again",
        )

    with stack.http() as http:
        teachers_after = http.get("/v1/teachers").json()["data"]
    leftovers = sorted(p.name for p in uploads.iterdir())
    figures(
        test="api_killed_mid_upload",
        api_downtime_s=round(downtime, 1),
        upload_outcome=outcome,
        poll_connection_errors=poller.connection_errors,
        poll_5xx=poller.server_errors,
        client_calls=poller.client_calls,
        client_errors=len(poller.client_errors),
        half_written_left=len(leftovers),
    )
    assert "status" not in outcome, f"the upload should have failed: {outcome}"
    assert [t["id"] for t in teachers_after] == [t["id"] for t in teachers_before]
    assert _keys(stack, "teachers/") == stored_before
    assert leftovers == [], f"half-written uploads left after the restart: {leftovers}"
    assert poller.connection_errors > 0, "the plain poller should have seen the API down"
    assert poller.server_errors == 0
    assert poller.client_errors == [], poller.client_errors
    stack.wait_finished(job_id)


def _keys(stack: Stack, prefix: str) -> list[str]:
    listing = stack.s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{prefix}")
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


# ---------------------------------------------------------------------------------------------
# 3. the database unreachable for a while
# ---------------------------------------------------------------------------------------------
def test_database_cut_briefly_mid_job(stack: Stack) -> None:
    """All connections to PostgreSQL drop mid-job and new ones are refused for a few seconds
    (shorter than the heartbeat timeout). The worker keeps computing and retries its writes;
    the job succeeds in its first attempt with a complete log. Meanwhile the API answers 503
    (``not_ready``, quickly, not a hang) and ``/readyz`` names the database."""
    with stack.http() as http:
        job_id = stack.submit(http, LONGER_SPEC)
        stack.wait_running(job_id, min_progress=0.05)
        api_answers: list[tuple[int, str, float]] = []
        with Outage(stack.pg_proxy) as outage:
            for path in (f"/v1/jobs/{job_id}", "/readyz"):
                started = time.monotonic()
                response = http.get(path)
                code = response.json().get("code", "")
                api_answers.append((response.status_code, code, time.monotonic() - started))
            ready = response.json()
            # the deliberate outage: a fixed length by design
            time.sleep(max(0.0, 3.0 - (time.monotonic() - outage._start)))
        assert all(status == 503 and code == "not_ready" for status, code, _ in api_answers), (
            api_answers
        )
        assert all(seconds < 10 for *_, seconds in api_answers), api_answers
        assert ready["checks"]["database"] != "ok", ready
        assert http.get(f"/v1/jobs/{job_id}").status_code == 200
    stack.wait_finished(job_id)
    events = assert_ran_once(stack, job_id)
    phases = [e["data"].get("phase") for e in events if e["type"] == "phase"]
    assert phases == ["synthesizing", "training", "evaluating", "exporting"], phases
    figures(
        test="database_cut_briefly",
        outage_s=round(outage.seconds, 1),
        api_answers=[[s, c, round(t, 2)] for s, c, t in api_answers],
        attempts=1,
        lost=0,
        run_twice=0,
    )


def test_database_cut_longer_than_the_heartbeat_timeout(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker loses PostgreSQL mid-job for longer than the heartbeat timeout. Another
    worker's sweeper (which still reaches the database) sees the stale heartbeat and requeues
    the job; when the link is back the first worker finds its claim gone and stops (its result
    is never recorded), then the requeued job resumes from its checkpoints and succeeds exactly
    once."""
    direct = {
        "CAKE_DATABASE_URL": stack.database_url,
        "CAKE_BROKER_URL": stack.redis.url,
        "CAKE_DATA_DIR": str(stack.root / "sweeper"),
    }
    with stack.http() as http:
        job_id = stack.submit(http, LONGER_SPEC)
    stack.wait_running(job_id, min_progress=0.05)
    with Outage(stack.pg_proxy) as outage:

        def requeued() -> bool:
            result = sweep_as_another_worker(direct, monkeypatch, HEARTBEAT_TIMEOUT_S)
            return job_id in result.requeued

        wait_for(requeued, 60, "the sweeper to requeue the silent job", interval=0.5)
        assert job_row(stack.database_url, job_id)["status"] == "queued"
    stack.wait_finished(job_id)
    events = assert_ran_once(stack, job_id, attempts=2)
    types = [e["type"] for e in events]
    assert types.count("requeued") == 1, types
    figures(
        test="database_cut_past_heartbeat_timeout",
        outage_s=round(outage.seconds, 1),
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        attempts=2,
        succeeded_events=types.count("succeeded"),
        lost=0,
    )


# ---------------------------------------------------------------------------------------------
# 4. the object store unreachable for a while
# ---------------------------------------------------------------------------------------------
def test_store_cut_while_fetching_the_teacher(stack: Stack) -> None:
    """S3 is unreachable when the worker takes the job: the teacher download retries with
    backoff and goes on when the store is back; the job succeeds in its first attempt."""
    assert stack.worker is not None
    worker = stack.worker
    retries_before = worker.log(1 << 30).count("download of teachers/")
    with Outage(stack.s3_proxy) as outage:
        with stack.http() as http:
            job_id = stack.submit(http)
        stack.wait_running(job_id)

        def retried() -> bool:
            return worker.log(1 << 30).count("download of teachers/") > retries_before

        wait_for(retried, 60, "the worker to retry the teacher download")
    stack.wait_finished(job_id)
    assert_ran_once(stack, job_id)
    figures(test="store_cut_at_fetch", outage_s=round(outage.seconds, 1), attempts=1, lost=0)


def test_store_cut_briefly_mid_job(stack: Stack) -> None:
    """S3 connections drop while the worker saves checkpoints; its writes retry with backoff and
    the job succeeds in its first attempt, with every artifact stored."""
    with stack.http() as http:
        job_id = stack.submit(http, LONGER_SPEC)
    stack.wait_running(job_id, min_progress=0.05)
    with Outage(stack.s3_proxy) as outage:
        time.sleep(3.0)  # the deliberate outage
    stack.wait_finished(job_id)
    assert_ran_once(stack, job_id)
    student = f"{PREFIX}/jobs/{job_id}/attempts/1/artifacts/student.pt"
    assert student in _keys(stack, f"jobs/{job_id}/")
    figures(test="store_cut_mid_job", outage_s=round(outage.seconds, 1), attempts=1, lost=0)
