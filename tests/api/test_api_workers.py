"""What the API knows about workers, from their heartbeats: ``/readyz`` and ``/metrics`` count
live workers per queue and name the queues missing one, ``default_queue = "auto"`` picks
``gpu`` only while a live GPU worker serves it, and a job that nobody serves gets a
``no_worker`` event from the API's watcher within seconds."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from api_support import BundledTeacher, FakeQueue, TestClient, upload_teacher

from cake_shared import workers
from cake_shared.models import utcnow


def _beat(client: TestClient, worker_id: str, queues: list[str], device: str, age_s: float = 0):
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        workers.record_heartbeat(
            session,
            worker_id,
            queues=queues,
            device=device,
            now=utcnow() - timedelta(seconds=age_s),
        )
        session.commit()


def _create_job(client: TestClient, teacher_id: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"teacher_id": teacher_id, "preset": "fast"})
    assert response.status_code == 202, response.text
    return response.json()


def _events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/events").json()["data"]


def test_readyz_names_the_queues_missing_a_worker(client: TestClient, wine: BundledTeacher) -> None:
    ready = client.get("/readyz").json()
    assert ready["workers"]["live"] == {"gpu": 0, "cpu": 0}
    assert ready["workers"]["missing"] == ["cpu"]  # where new jobs go ("auto": cpu)
    assert "cpu queue" in ready["workers"]["detail"]

    _beat(client, "cake-1@a", ["cpu"], "cpu")
    _beat(client, "cake-2@b", ["gpu", "cpu"], "cuda", age_s=3600)  # long dead
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["workers"]["missing"] == []
    assert ready["workers"]["live"] == {"gpu": 0, "cpu": 1}
    assert [(w["id"], w["queues"], w["device"]) for w in ready["workers"]["workers"]] == [
        ("cake-1@a", ["cpu"], "cpu")
    ]


def test_auto_queue_follows_live_gpu_workers(
    make_client: Any, wine: BundledTeacher, fake_queue: FakeQueue
) -> None:
    client = make_client()
    teacher = upload_teacher(client, wine.path, [13]).json()["id"]
    first = _create_job(client, teacher)
    _beat(client, "gpu-box", ["gpu", "cpu"], "cuda")
    second = _create_job(client, teacher)
    _beat(client, "gpu-box", ["gpu", "cpu"], "cuda", age_s=3600)  # it stopped beating
    third = _create_job(client, teacher)
    assert [q for _, q in fake_queue.sent] == ["cpu", "gpu", "cpu"]
    queued = {e["data"].get("queue") for e in _events(client, second["id"])}
    assert queued == {"gpu"}
    assert [e["type"] for e in _events(client, first["id"])] == ["queued"]
    assert third["status"] == "queued"

    # A queue configured by name is taken as is.
    pinned = make_client(default_queue="gpu")
    teacher = upload_teacher(pinned, wine.path, [13]).json()["id"]
    _create_job(pinned, teacher)
    assert fake_queue.sent[-1][1] == "gpu"
    # ...and the gpu queue, holding a job nobody serves, is missing a worker.
    assert pinned.get("/readyz").json()["workers"]["missing"] == ["gpu"]


def test_metrics_count_live_workers_per_queue(client: TestClient) -> None:
    _beat(client, "w1", ["gpu", "cpu"], "cuda")
    _beat(client, "w2", ["cpu"], "cpu")
    _beat(client, "w3", ["cpu"], "cpu", age_s=3600)
    text = client.get("/metrics").text
    assert 'cake_live_workers{queue="cpu"} 2.0' in text
    assert 'cake_live_workers{queue="gpu"} 1.0' in text
    assert 'cake_live_workers_by_device{device="cuda"} 1.0' in text


def test_the_watcher_flags_a_job_nobody_serves(
    make_client: Any, wine: BundledTeacher, fake_queue: FakeQueue
) -> None:
    client = make_client(no_worker_after_s=0.2, worker_watch_interval_s=0.1)
    teacher = upload_teacher(client, wine.path, [13]).json()["id"]
    with client:  # runs the app's lifespan, which starts the watcher thread
        _beat(client, "gpu-only", ["gpu"], "cpu")
        job = _create_job(client, teacher)
        deadline = time.monotonic() + 30
        while not any(e["type"] == "no_worker" for e in _events(client, job["id"])):
            assert time.monotonic() < deadline, _events(client, job["id"])
            time.sleep(0.1)
        (event,) = [e for e in _events(client, job["id"]) if e["type"] == "no_worker"]
        assert event["level"] == "warning" and "cpu queue" in event["message"]
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"

        # A job whose queue a live worker serves is left alone.
        _beat(client, "cpu-one", ["cpu"], "cpu")
        served = _create_job(client, teacher)
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        with ctx.sessionmaker() as session:
            # A look one second later: the job is older than no_worker_after_s by then.
            later = utcnow() + timedelta(seconds=1)
            assert workers.flag_unserved_jobs(session, ctx.settings, now=later) == []
        assert [e["type"] for e in _events(client, served["id"])] == ["queued"]
    assert len([e for e in _events(client, job["id"]) if e["type"] == "no_worker"]) == 1
