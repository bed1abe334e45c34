"""Events (JSON pages and Server-Sent Events) and artifact downloads.

A worker is simulated by writing what it would write (status, events, artifact rows and store
objects) straight into the real database and store.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import httpx
import pytest
from api_support import BundledTeacher, TestClient, assert_problem, upload_teacher
from httpx_sse import EventSource, ServerSentEvent

from cake_shared.ids import new_id
from cake_shared.models import Artifact, Job, JobEvent, utcnow


@pytest.fixture
def job_id(client: TestClient, wine: BundledTeacher) -> str:
    teacher = upload_teacher(client, wine.path, [13]).json()
    return str(client.post("/v1/jobs", json={"teacher_id": teacher["id"]}).json()["id"])


def _worker_writes(
    client: TestClient, job_id: str, events: list[tuple[str, str]], **job_values: Any
) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        for type_, message in events:
            session.add(
                JobEvent(id=new_id("event"), job_id=job_id, type=type_, message=message, data={})
            )
        job = session.get(Job, job_id)
        for key, value in job_values.items():
            setattr(job, key, value)
        session.commit()


def _finish(client: TestClient, job_id: str, status: str = "succeeded") -> None:
    _worker_writes(
        client,
        job_id,
        [("started", "started"), ("phase", "synthesizing"), (status, status)],
        status=status,
        phase="exporting",
        progress=1.0,
        started_at=utcnow(),
        finished_at=utcnow(),
        attempts=1,
        metrics={"synthesis_seconds": 1.5, "training_seconds": 2.5},
    )


def _events(response: httpx.Response) -> list[ServerSentEvent]:
    """The stream's events as httpx-sse (the client's parser) reads them, without the messages
    that carry no data (the reconnection hint; heartbeats once an id was seen)."""
    return [e for e in EventSource(response).iter_sse() if e.data]


def test_events_oldest_first_with_after(client: TestClient, job_id: str) -> None:
    _finish(client, job_id)
    events = client.get(f"/v1/jobs/{job_id}/events").json()
    types = [e["type"] for e in events["data"]]
    assert types == ["queued", "started", "phase", "succeeded"]
    first = events["data"][0]
    assert set(first) == {"id", "created_at", "level", "type", "message", "data"}
    assert first["id"].startswith("evt_")
    rest = client.get(f"/v1/jobs/{job_id}/events", params={"after": first["id"]}).json()
    assert [e["type"] for e in rest["data"]] == types[1:]
    page = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}).json()
    assert page["has_more"] and page["next_after"] == events["data"][1]["id"]
    body = assert_problem(
        client.get(f"/v1/jobs/{job_id}/events", params={"after": "evt_nope"}),
        422,
        "validation_error",
    )
    assert body["errors"][0]["loc"] == ["query", "after"]
    assert_problem(client.get("/v1/jobs/job_nope/events"), 404, "not_found")


def test_sse_stream_of_a_finished_job(client: TestClient, job_id: str) -> None:
    _finish(client, job_id)
    r = client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    messages = _events(r)
    assert [m.event for m in messages] == ["queued", "started", "phase", "succeeded", "end"]
    first = json.loads(messages[0].data)
    assert messages[0].id == first["id"] and first["type"] == "queued"
    assert json.loads(messages[-1].data) == {"status": "succeeded"}
    # The bytes on the wire, as API.md's clients have always read them: a reconnection hint,
    # then one "id/event/data" block per event (compact JSON), then "end"; "\n" line ends.
    assert r.text.startswith("retry: 2000\n\n")
    block = f"id: {first['id']}\nevent: queued\ndata: {messages[0].data}\n\n"
    assert block in r.text and messages[0].data == json.dumps(first, separators=(",", ":"))
    assert r.text.endswith('event: end\ndata: {"status": "succeeded"}\n\n')
    assert "\r" not in r.text
    resumed = client.get(
        f"/v1/jobs/{job_id}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": messages[2].id},
    )
    assert [m.event for m in _events(resumed)] == ["succeeded", "end"]
    after = client.get(
        f"/v1/jobs/{job_id}/events",
        params={"after": messages[1].id},
        headers={"Accept": "text/event-stream"},
    )
    assert [m.event for m in _events(after)] == ["phase", "succeeded", "end"]


def test_sse_streams_live_until_the_job_ends(client: TestClient, job_id: str) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    ctx.sse_poll_s = 0.05
    ctx.sse_heartbeat_s = 0.2

    def worker() -> None:
        time.sleep(0.3)
        _worker_writes(client, job_id, [("started", "started")], status="running")
        time.sleep(0.6)
        _finish(client, job_id, "failed")

    thread = threading.Thread(target=worker)
    thread.start()
    start = time.monotonic()
    r = client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
    thread.join()
    assert time.monotonic() - start >= 0.8, "the stream stayed open until the job ended"
    events = [m.event for m in _events(r)]
    assert events[:2] == ["queued", "started"] and events[-2:] == ["failed", "end"]
    assert "\n\n: keep-alive\n\n" in r.text, "heartbeat comments"


def _add_artifacts(
    client: TestClient, job_id: str, files: dict[str, bytes] | None = None, folder: str = ""
) -> dict[str, bytes]:
    """Store ``files`` under ``jobs/<id>/<folder>artifacts/`` and add their rows."""
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    if files is None:
        files = {
            "student.pt": bytes(range(256)) * 40,
            "manifest.json": json.dumps({"teacher": "x"}).encode(),
        }
    with ctx.sessionmaker() as session:
        for name, data in files.items():
            key = f"jobs/{job_id}/{folder}artifacts/{name}"
            ctx.store.put_bytes(key, data)
            session.add(
                Artifact(
                    job_id=job_id,
                    name=name,
                    size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    content_type="application/json"
                    if name.endswith(".json")
                    else "application/octet-stream",
                    storage_key=key,
                )
            )
        session.commit()
    return files


def test_artifacts_are_409_before_success(client: TestClient, job_id: str) -> None:
    _add_artifacts(client, job_id)
    _worker_writes(client, job_id, [], status="running")
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/student.pt"), 409, "conflict")
    assert_problem(client.get(f"/v1/jobs/{job_id}/student"), 409, "conflict")


def test_artifact_downloads(client: TestClient, job_id: str) -> None:
    files = _add_artifacts(client, job_id)
    _finish(client, job_id)
    listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert [a["name"] for a in listing["data"]] == ["manifest.json", "student.pt"]
    student = files["student.pt"]
    sha = hashlib.sha256(student).hexdigest()
    assert listing["data"][1] == {
        "name": "student.pt",
        "size_bytes": len(student),
        "sha256": sha,
        "content_type": "application/octet-stream",
    }

    full = client.get(f"/v1/jobs/{job_id}/artifacts/student.pt")
    assert full.status_code == 200 and full.content == student
    assert full.headers["etag"] == f'"{sha}"'
    assert full.headers["accept-ranges"] == "bytes"
    assert client.get(f"/v1/jobs/{job_id}/student").content == student

    cached = client.get(
        f"/v1/jobs/{job_id}/student", headers={"If-None-Match": f'"other", "{sha}"'}
    )
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == f'"{sha}"'

    part = client.get(f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == student[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(student)}"
    tail = client.get(f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == student[-5:]
    open_end = client.get(f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=10200-"})
    assert open_end.content == student[10200:]
    stale = client.get(
        f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=0-1", "If-Range": '"old"'}
    )
    assert stale.status_code == 200 and stale.content == student
    outside = client.get(f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=999999-"})
    assert_problem(outside, 416, "range_not_satisfiable")
    assert outside.headers["content-range"] == f"bytes */{len(student)}"

    manifest = client.get(f"/v1/jobs/{job_id}/artifacts/manifest.json")
    assert manifest.headers["content-type"].startswith("application/json")
    assert manifest.json() == {"teacher": "x"}
    assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/samples.png"), 404, "not_found")
    assert_problem(client.get("/v1/jobs/job_nope/artifacts"), 404, "not_found")

    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    store = client.app.state.ctx.store  # type: ignore[attr-defined]
    assert store.list(f"jobs/{job_id}/") == []


def test_a_job_serves_the_attempt_that_won_and_its_delete_removes_every_attempt(
    client: TestClient, job_id: str
) -> None:
    """Per-attempt keys: the job succeeded on attempt 2 while attempt 1 (its worker lost the
    claim) also uploaded, and both left checkpoints. Every download route serves attempt 2's
    bytes, the list its rows, and deleting the job removes the objects of every attempt."""
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    winner = {"student.pt": b"attempt 2 student", "report.md": b"# attempt 2\n"}
    for name in winner:
        ctx.store.put_bytes(f"jobs/{job_id}/attempts/1/artifacts/{name}", b"stale attempt 1")
    for attempt in (1, 2):
        ctx.store.put_bytes(f"jobs/{job_id}/attempts/{attempt}/checkpoints/training.pt", b"c")
    _add_artifacts(client, job_id, winner, folder="attempts/2/")
    _finish(client, job_id)
    _worker_writes(client, job_id, [], attempts=2, artifacts_attempt=2)

    listing = client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
    assert {a["name"]: a["sha256"] for a in listing} == {
        name: hashlib.sha256(data).hexdigest() for name, data in winner.items()
    }
    assert set(listing[0]) == {"name", "size_bytes", "sha256", "content_type"}
    for name, data in winner.items():
        assert client.get(f"/v1/jobs/{job_id}/artifacts/{name}").content == data
    assert client.get(f"/v1/jobs/{job_id}/student").content == winner["student.pt"]
    part = client.get(f"/v1/jobs/{job_id}/student", headers={"Range": "bytes=0-8"})
    assert part.status_code == 206 and part.content == winner["student.pt"][:9]

    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert ctx.store.list(f"jobs/{job_id}/") == []
