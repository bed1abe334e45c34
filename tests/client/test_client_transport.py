"""The client against a scripted loopback server: retries and backoff, ``Retry-After``,
idempotency keys on retried creates, typed problems, SSE parsing, the polling fallback of
``wait``, and downloads that are resumed or refused on a checksum mismatch.

A healthy service never answers 503 on purpose, so these cases need a server that does; nor
can a test make a real job refuse its int8 student, so that case is scripted here too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_support import (
    Reply,
    ScriptedServer,
    Seen,
    free_port,
    job_json,
    one_line_error,
    problem,
    run_cli,
    teacher_json,
)

from cake_client import (
    ArtifactUnavailable,
    ChecksumMismatch,
    Client,
    JobProgress,
    NotFound,
    NotReady,
    RateLimited,
    ServerError,
    ServiceUnreachable,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)
from cake_client._http import parse_retry_after


def fast_client(url: str, retries: int = 4) -> Client:
    """Backoff of a few milliseconds, so a test measures the retries and not the sleeping."""
    return Client(url, max_retries=retries, backoff_base=0.01, backoff_max=0.05, timeout=10)


def test_503_twice_then_success_is_retried() -> None:
    with ScriptedServer() as server:
        server.add(
            "GET",
            "/v1/teachers/tch_1",
            problem(503, "not_ready", "database down"),
            problem(503, "not_ready", "database down"),
            Reply(200, teacher_json()),
        )
        with fast_client(server.url) as client:
            teacher = client.teachers.get("tch_1")
            assert client.transport.retries_made == 2
    assert teacher.id == "tch_1" and teacher.input_shape == (13,)
    assert teacher.raw["future_field"] == "kept in raw"
    assert len(server.requests("GET", "/v1/teachers/tch_1")) == 3


def test_429_waits_as_long_as_retry_after_says() -> None:
    with ScriptedServer() as server:
        server.add(
            "GET",
            "/v1/jobs/job_1",
            problem(429, "rate_limited", "slow down", **{"Retry-After": "1"}),
            Reply(200, job_json()),
        )
        with fast_client(server.url) as client:
            job = client.jobs.get("job_1")
    first, second = server.requests("GET", "/v1/jobs/job_1")
    assert job.status == "running"
    # The computed backoff is ~10 ms; only Retry-After explains a full second.
    assert second.at - first.at >= 0.95


def test_rate_limit_that_outlasts_the_retries_is_raised_with_its_hint() -> None:
    with ScriptedServer() as server:
        server.add("GET", "/v1/jobs", problem(429, "rate_limited", "slow", **{"Retry-After": "0"}))
        with fast_client(server.url, retries=2) as client, pytest.raises(RateLimited) as info:
            list(client.jobs.list())
    assert info.value.status == 429 and info.value.retry_after == 0.0
    assert len(server.requests("GET", "/v1/jobs")) == 3


def test_a_retried_create_sends_the_same_idempotency_key() -> None:
    with ScriptedServer() as server:
        server.add(
            "POST",
            "/v1/jobs",
            problem(503, "not_ready", "broker down"),
            Reply(502, "bad gateway", content_type="text/html"),
            Reply(202, job_json(status="queued")),
        )
        with fast_client(server.url) as client:
            job = client.jobs.create("tch_1", preset="fast", seed=3)
    posts = server.requests("POST", "/v1/jobs")
    keys = {p.headers["idempotency-key"] for p in posts}
    assert len(posts) == 3 and len(keys) == 1
    assert next(iter(keys)).startswith("cake-client-")
    assert json.loads(posts[0].body) == {"preset": "fast", "seed": 3, "teacher_id": "tch_1"}
    assert job.status == "queued"


def test_persistent_5xx_raises_server_error_after_max_retries() -> None:
    with ScriptedServer() as server:
        server.add("GET", "/v1/jobs/job_1", problem(500, "internal", "boom"))
        with fast_client(server.url, retries=3) as client, pytest.raises(ServerError) as info:
            client.jobs.get("job_1")
    assert info.value.code == "internal" and info.value.detail == "boom"
    assert len(server.requests("GET", "/v1/jobs/job_1")) == 4


def test_client_errors_are_typed_and_not_retried() -> None:
    errors = [{"loc": ["body", "synthesis", "bogus"], "msg": "unknown field"}]
    body = {"type": "x", "title": "Unprocessable", "status": 422, "code": "validation_error"}
    body |= {"detail": "synthesis.bogus: unknown field", "errors": errors}
    with ScriptedServer() as server:
        server.add("POST", "/v1/jobs", Reply(422, body, content_type="application/problem+json"))
        server.add("GET", "/v1/jobs/job_x", problem(404, "not_found", "no job with id 'job_x'"))
        server.add("GET", "/v1/teachers", problem(401, "unauthorized", "bad key"))
        server.add("GET", "/readyz", problem(503, "not_ready", "store: unavailable"))
        with fast_client(server.url, retries=1) as client:
            with pytest.raises(ValidationError) as invalid:
                client.jobs.create("tch_1", spec={"synthesis": {"bogus": 1}})
            with pytest.raises(NotFound):
                client.jobs.get("job_x")
            with pytest.raises(Unauthorized):
                list(client.teachers.list())
            with pytest.raises(NotReady):
                client.ready()
    assert invalid.value.code == "validation_error" and invalid.value.errors == errors
    assert len(server.requests("POST", "/v1/jobs")) == 1
    assert len(server.requests("GET", "/v1/jobs/job_x")) == 1


def test_api_key_is_sent_as_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAKE_API_KEY", "sk-test")
    with ScriptedServer() as server:
        server.add("GET", "/v1/teachers/tch_1", Reply(200, teacher_json()))
        with fast_client(server.url) as client:
            client.teachers.get("tch_1")
    assert server.seen[0].headers["authorization"] == "Bearer sk-test"


def test_refused_connection_is_service_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with fast_client(url, retries=2) as client, pytest.raises(ServiceUnreachable) as info:
        client.jobs.get("job_1")
    assert "3 attempts" in str(info.value)
    assert time.monotonic() - start < 5


def test_pagination_follows_next_after() -> None:
    pages = {
        None: {"data": [teacher_json("tch_3"), teacher_json("tch_2")], "has_more": True},
        "tch_2": {"data": [teacher_json("tch_1")], "has_more": False, "next_after": None},
    }
    pages[None]["next_after"] = "tch_2"

    def answer(seen: Seen) -> Reply:
        after = seen.query.get("after", [None])[0]
        return Reply(200, {"object": "list", **pages[after]})

    with ScriptedServer() as server:
        server.route("GET", "/v1/teachers", answer)
        with fast_client(server.url) as client:
            ids = [t.id for t in client.teachers.list(limit=2)]
    assert ids == ["tch_3", "tch_2", "tch_1"]
    assert [s.query.get("limit") for s in server.seen] == [["2"], ["2"]]


def _sse_event(event_id: str, kind: str, **data: Any) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "message": kind, "level": "info", "data": data}


def test_stream_events_resumes_after_a_dropped_stream_with_last_event_id() -> None:
    first, second = _sse_event("evt_1", "phase", phase="training"), _sse_event("evt_2", "succeeded")
    # CRLF line ends, a multi-line data field and a comment: what httpx-sse reads per the spec
    data = "".join(f"data: {line}\r\n" for line in json.dumps(first, indent=1).splitlines())
    dropped = f"retry: 2000\r\n\r\n: keep-alive\r\n\r\nid: evt_1\r\nevent: phase\r\n{data}\r\n"
    ended = (
        f"id: evt_2\nevent: succeeded\ndata: {json.dumps(second)}\n\n"
        'event: end\ndata: {"status": "succeeded"}\n\n'
    )
    sse = "text/event-stream"
    with ScriptedServer() as server:
        server.add(
            "GET",
            "/v1/jobs/job_1/events",
            Reply(200, dropped, content_type=sse),
            Reply(200, ended, content_type=sse),
        )
        with fast_client(server.url) as client:
            streamed = list(client.jobs.stream_events("job_1"))
    assert [e.id for e in streamed] == ["evt_1", "evt_2"]
    assert streamed[0].phase == "training"
    retried = server.requests("GET", "/v1/jobs/job_1/events")[1]
    assert retried.headers["last-event-id"] == "evt_1" and retried.query["after"] == ["evt_1"]


def test_wait_times_out_while_only_heartbeats_arrive() -> None:
    """A queued job's stream carries nothing but heartbeats: every read succeeds, so only the
    client's own deadline can end ``wait(timeout=...)``."""

    def heartbeats() -> Iterator[bytes]:
        yield b"retry: 2000\n\n"
        for _ in range(200):
            time.sleep(0.05)
            yield b": keep-alive\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=heartbeats()
            )
        return httpx.Response(200, json=job_json(status="queued"))

    client = Client("http://cake.test", transport=httpx.MockTransport(handler), max_retries=0)
    start = time.monotonic()
    with client, pytest.raises(WaitTimeout) as raised:
        client.jobs.wait("job_1", timeout=0.5)
    assert time.monotonic() - start < 3.0
    assert raised.value.job_id == "job_1"


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


def test_wait_falls_back_to_polling_when_the_stream_fails() -> None:
    states = [job_json(progress=0.2), job_json(progress=0.6), job_json(status="succeeded")]

    def job(seen: Seen) -> Reply:
        return Reply(200, states.pop(0) if len(states) > 1 else states[0])

    with ScriptedServer() as server:
        server.route("GET", "/v1/jobs/job_1", job)
        server.add("GET", "/v1/jobs/job_1/events", problem(500, "internal", "no streams today"))
        reports: list[JobProgress] = []
        with fast_client(server.url, retries=1) as client:
            final = client.jobs.wait("job_1", poll_interval=0.05, on_progress=reports.append)
    assert final.status == "succeeded"
    progress = [r.progress for r in reports]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert len(server.requests("GET", "/v1/jobs/job_1/events")) >= 2  # tried, then gave up


def test_polling_revalidates_with_the_last_etag_and_keeps_the_job_on_304() -> None:
    """While the job is unchanged the service answers 304 without a body; ``wait`` keeps the
    job it has and sends the newest tag once the job changed."""
    answers = iter(["v1", "304", "304", "v2", "304", "v3"])

    def job(seen: Seen) -> Reply:
        answer = next(answers)
        if answer == "304":
            return Reply(304, b"", {"ETag": seen.headers["if-none-match"]})
        state = {"v1": job_json(progress=0.2), "v2": job_json(progress=0.7)}.get(answer)
        return Reply(200, state or job_json(status="succeeded"), {"ETag": f'W/"{answer}"'})

    with ScriptedServer() as server:
        server.route("GET", "/v1/jobs/job_1", job)
        server.add("GET", "/v1/jobs/job_1/events", problem(500, "internal", "no streams today"))
        reports: list[JobProgress] = []
        with fast_client(server.url, retries=0) as client:
            final = client.jobs.wait("job_1", poll_interval=0.01, on_progress=reports.append)
    assert final.status == "succeeded"
    sent = [s.headers.get("if-none-match") for s in server.requests("GET", "/v1/jobs/job_1")]
    assert sent == [None, 'W/"v1"', 'W/"v1"', 'W/"v1"', 'W/"v2"', 'W/"v2"']
    assert [r.progress for r in reports] == [0.2, 0.2, 0.2, 0.7, 0.7, 1.0]


def test_the_fall_back_long_polls_and_paces_a_service_that_answers_at_once() -> None:
    """Once the stream is given up, each poll asks the service to hold the answer
    (``wait=30``); this service ignores ``wait`` and answers 304 at once, as one from before
    long polling does, so the client waits ``poll_interval`` between polls instead of
    spinning."""
    answers = iter(["v1", "v1", "304", "304", "304", "done"])

    def job(seen: Seen) -> Reply:
        answer = next(answers)
        if answer == "304":
            return Reply(304, b"", {"ETag": seen.headers["if-none-match"]})
        state = job_json(progress=0.2) if answer == "v1" else job_json(status="succeeded")
        return Reply(200, state, {"ETag": f'W/"{answer}"'})

    with ScriptedServer() as server:
        server.route("GET", "/v1/jobs/job_1", job)
        server.add("GET", "/v1/jobs/job_1/events", problem(500, "internal", "no streams today"))
        with fast_client(server.url, retries=0) as client:
            final = client.jobs.wait("job_1", poll_interval=0.2)
    assert final.status == "succeeded"
    polls = server.requests("GET", "/v1/jobs/job_1")
    # The first read, then one after each of the two failed streams; then long polls only.
    waits = [s.query.get("wait") for s in polls]
    assert waits == [None, None, None, ["30.0"], ["30.0"], ["30.0"]]
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(polls[3:])]
    # Measured where the service receives the polls, a hair after the client sent them: a
    # client that did not pace itself would send them a few milliseconds apart.
    assert min(gaps) >= 0.18


def test_wait_follows_the_event_stream() -> None:
    events = [
        {"id": "evt_1", "type": "phase", "message": "training", "level": "info",
         "data": {"phase": "training", "progress": 0.6}, "created_at": "2024-01-01T00:00:00Z"},
        {"id": "evt_2", "type": "metrics", "message": "epoch 1/1", "level": "info",
         "data": {"phase": "training", "progress": 0.9, "phase_progress": 1.0}},
        {"id": "evt_3", "type": "succeeded", "message": "done", "level": "info", "data": {}},
    ]  # fmt: skip
    stream = "retry: 2000\n\n" + "".join(
        f"id: {e['id']}\nevent: {e['type']}\ndata: {json.dumps(e)}\n\n: keep-alive\n\n"
        for e in events
    )
    stream += 'event: end\ndata: {"status": "succeeded"}\n\n'
    states = [job_json(progress=0.0), job_json(status="succeeded")]
    with ScriptedServer() as server:
        server.add("GET", "/v1/jobs/job_1", *(Reply(200, s) for s in states))
        server.add(
            "GET", "/v1/jobs/job_1/events", Reply(200, stream, content_type="text/event-stream")
        )
        reports: list[JobProgress] = []
        with fast_client(server.url) as client:
            final = client.jobs.wait("job_1", on_progress=reports.append)
    assert final.status == "succeeded"
    assert [r.event.id for r in reports if r.event] == ["evt_1", "evt_2", "evt_3"]
    assert [r.progress for r in reports] == [0.0, 0.6, 0.9, 1.0, 1.0]
    assert server.requests("GET", "/v1/jobs/job_1/events")[0].headers["accept"] == (
        "text/event-stream"
    )


def _artifact_routes(server: ScriptedServer, payload: bytes, listed_sha: str) -> None:
    listing = {
        "object": "list",
        "data": [{"name": "student.pt", "size_bytes": len(payload), "sha256": listed_sha}],
        "has_more": False,
        "next_after": None,
    }
    server.add("GET", "/v1/jobs/job_1/artifacts", Reply(200, listing))


def test_download_resumes_a_broken_transfer_with_range(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 40
    sha = hashlib.sha256(payload).hexdigest()
    etag = f'"{sha}"'

    def download(seen: Seen) -> Reply:
        wanted = seen.headers.get("range")
        if wanted is None:
            return Reply(200, payload, {"ETag": etag}, cut_after=3000)
        start = int(wanted.removeprefix("bytes=").rstrip("-"))
        assert seen.headers.get("if-range") == etag
        size = len(payload)
        headers = {"ETag": etag, "Content-Range": f"bytes {start}-{size - 1}/{size}"}
        return Reply(206, payload[start:], headers)

    with ScriptedServer() as server:
        _artifact_routes(server, payload, sha)
        server.route("GET", "/v1/jobs/job_1/artifacts/student.pt", download)
        with fast_client(server.url) as client:
            path = client.jobs.download_student("job_1", tmp_path / "out" / "student.pt")
    assert path.read_bytes() == payload
    ranges = [s.headers.get("range") for s in server.requests("GET", path_of_student())]
    assert ranges == [None, "bytes=3000-"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.pt"]


def path_of_student() -> str:
    return "/v1/jobs/job_1/artifacts/student.pt"


def test_download_with_a_wrong_checksum_leaves_nothing(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        _artifact_routes(server, b"student bytes", "f" * 64)
        server.add("GET", path_of_student(), Reply(200, b"student bytes"))
        with fast_client(server.url) as client, pytest.raises(ChecksumMismatch):
            client.jobs.download_student("job_1", tmp_path / "student.pt")
    assert list(tmp_path.iterdir()) == []


def test_cli_exit_codes_for_unauthorized_and_failed_jobs(tmp_path: Path) -> None:
    failed = job_json(
        status="failed", error={"code": "synthesis_diverged", "message": "lower the noise"}
    )
    with ScriptedServer() as server:
        server.add("GET", "/v1/jobs", problem(401, "unauthorized", "missing API key"))
        server.add("GET", "/v1/jobs/job_1", Reply(200, failed))
        denied = run_cli("jobs", "list", url=server.url, cwd=tmp_path)
        waited = run_cli("jobs", "wait", "job_1", url=server.url, cwd=tmp_path)
        waited_json = run_cli("jobs", "wait", "job_1", "--json", url=server.url, cwd=tmp_path)
    assert denied.returncode == 6
    assert "missing API key" in one_line_error(denied)
    assert waited.returncode == 3
    assert "lower the noise" in one_line_error(waited)
    assert waited_json.returncode == 3
    assert json.loads(waited_json.stdout)["job"]["status"] == "failed"
    assert json.loads(one_line_error(waited_json))["error"]["exit_code"] == 3


INT8_REASON = (
    "int8 agreement with the teacher 0.9000 is 0.9184 of the fp32 model's 0.9800, below the "
    "0.99 required"
)


def _deployed_job_routes(server: ScriptedServer) -> dict[str, bytes]:
    """A succeeded job that kept ``student.onnx`` but not ``student.int8.onnx``, with the
    manifest's deployment section saying why (the shape ``cake_core.deploy`` writes)."""
    row = {"format": "onnx", "runtime": "onnxruntime", "parameters": 500, "repeats": 9}
    manifest = {
        "metrics": {"agreement_synthetic": 0.98},
        "deployment": {
            "onnx": {"kept": True, "opset": 17, "samples": 200, "top1_agreement": 1.0,
                     "max_abs_logit_diff": 1e-6, "reason": "all 200 agree"},
            "int8": {"kept": False, "format": "QDQ", "calibration_samples": 256,
                     "agreement_fp32": 0.98, "agreement_int8": 0.9, "ratio": 0.9184,
                     "min_ratio": 0.99, "reason": INT8_REASON},
            "latency": {"device": "cpu", "threads": 1, "batch_sizes": [1, 64],
                        "statistic": "median"},
            "table": [
                {**row, "artifact": "student.onnx", "role": "student", "size_bytes": 2100,
                 "latency_ms_batch_1": 0.05, "latency_ms_batch_64": 0.4,
                 "agreement_teacher": 0.98},
            ],
        },
    }  # fmt: skip
    files = {
        "student.pt": b"torchscript student",
        "student.onnx": b"onnx student",
        "manifest.json": json.dumps(manifest).encode(),
    }
    listing = [
        {"name": name, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in files.items()
    ]
    server.add("GET", "/v1/jobs/job_1", Reply(200, job_json(status="succeeded")))
    server.add("GET", "/v1/jobs/job_1/artifacts", Reply(200, {"object": "list", "data": listing}))
    for name, data in files.items():
        server.add("GET", f"/v1/jobs/job_1/artifacts/{name}", Reply(200, data))
    return files


def test_an_int8_student_the_job_did_not_keep_is_refused_with_the_manifests_reason(
    tmp_path: Path,
) -> None:
    with ScriptedServer() as server:
        files = _deployed_job_routes(server)
        with fast_client(server.url) as client:
            with pytest.raises(ArtifactUnavailable) as refused:
                client.jobs.download_onnx("job_1", tmp_path / "s.int8.onnx", int8=True)
            onnx = client.jobs.get("job_1").download_onnx(tmp_path / "s.onnx")
            deployment = client.jobs.deployment("job_1")
        # -o picks the file by its extension; --artifact wins over it
        cli = [(*args, "--retries", "0") for args in (
            ("jobs", "download", "job_1", "-o", "cli.int8.onnx"),
            ("jobs", "wait", "job_1", "-o", "cli.int8.onnx", "--json"),
            ("jobs", "download", "job_1", "-o", "cli.onnx"),
            ("jobs", "download", "job_1", "-o", "cli.INT8.ONNX", "--artifact", "student.pt"),
        )]  # fmt: skip
        download, wait_json, onnx_cli, explicit = (
            run_cli(*args, url=server.url, cwd=tmp_path) for args in cli
        )
        int8_fetches = server.requests("GET", "/v1/jobs/job_1/artifacts/student.int8.onnx")

    assert refused.value.reason == f"int8 was not kept: {INT8_REASON}"
    assert refused.value.available == ["manifest.json", "student.onnx", "student.pt"]
    assert onnx.read_bytes() == files["student.onnx"]
    assert deployment is not None and not deployment.int8.kept and deployment.onnx.kept
    assert deployment.int8.ratio == 0.9184 and deployment.int8.min_ratio == 0.99
    assert [r.artifact for r in deployment.table] == ["student.onnx"]
    row = deployment.row("student.onnx")
    assert row is not None and row.latency_ms_batch_64 == 0.4 and row.agreement_teacher == 0.98
    assert deployment.row("student.int8.onnx") is None

    assert download.returncode == 1
    line = one_line_error(download)
    assert line == (
        f"error: job job_1 has no student.int8.onnx: int8 was not kept: {INT8_REASON} "
        "(its artifacts: manifest.json, student.onnx, student.pt)"
    )
    assert wait_json.returncode == 1
    assert json.loads(wait_json.stdout)["job"]["status"] == "succeeded"
    error = json.loads(one_line_error(wait_json))["error"]
    assert error["code"] == "artifact_unavailable" and error["exit_code"] == 1
    assert INT8_REASON in error["message"]
    assert int8_fetches == []  # refused from the listing, never asked for
    assert not (tmp_path / "cli.int8.onnx").exists()

    assert onnx_cli.returncode == 0, onnx_cli.stderr
    assert (tmp_path / "cli.onnx").read_bytes() == files["student.onnx"]
    assert explicit.returncode == 0, explicit.stderr
    assert (tmp_path / "cli.INT8.ONNX").read_bytes() == files["student.pt"]
