"""Worker heartbeats (``cake_shared.workers``): the row a worker keeps, who counts as live, the
``auto`` queue, the ``no_worker`` event, and a worker that refuses a database it cannot use."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from worker_support import Service, wait_for

from cake_cli.service import upgrade_database
from cake_shared import jobs, workers
from cake_shared.models import Job, Worker, utcnow
from cake_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
#: Only stored, never run here.
WINE = SimpleNamespace(path=ROOT / "examples" / "wine_mlp.pt", input_shape=(13,), num_classes=3)


def _rows(service: Service) -> list[Worker]:
    with service.ctx.session_scope() as session:
        return list(session.scalars(select(Worker)))


def _beat(
    service: Service, worker_id: str, queues: list[str], device: str, age_s: float = 0.0
) -> None:
    with service.ctx.session_scope() as session:
        workers.record_heartbeat(
            session,
            worker_id,
            queues=queues,
            device=device,
            now=utcnow() - timedelta(seconds=age_s),
        )


def _flag(service: Service) -> list[str]:
    with service.ctx.session_scope() as session:
        return workers.flag_unserved_jobs(session, service.ctx.settings)


def _no_worker_events(service: Service, job_id: str) -> int:
    return sum(e.type == workers.NO_WORKER for e in service.events(job_id))


def test_heartbeat_records_queues_and_device_then_removes_itself(service: Service) -> None:
    beat = workers.Heartbeat(
        service.ctx, "cake-1@host", ["gpu", "cpu"], concurrency=2, interval_s=0.05
    )
    beat.start()
    try:
        wait_for(lambda: beat.beats >= 3, 30, "three heartbeats")
        (row,) = _rows(service)
        assert row.id == "cake-1@host" and row.queues == ["gpu", "cpu"]
        assert row.device in ("cpu", "cuda") and row.concurrency == 2
        assert row.pid == os.getpid() and row.heartbeat_at > utcnow() - timedelta(seconds=10)
    finally:
        beat.stop()
    assert _rows(service) == []  # a clean stop leaves no live worker behind


def test_device_follows_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert workers.detect_device("cpu") == "cpu"
    assert workers.detect_device("cuda:1") == "cuda"
    assert workers.quick_device("cuda") == "cuda"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert workers.quick_device(None) == "cpu"


def test_live_workers_and_the_auto_queue(service: Service) -> None:
    settings = Settings(worker_live_s=10)
    _beat(service, "cpu-worker", ["cpu"], "cpu")
    _beat(service, "dead-gpu", ["gpu", "cpu"], "cuda", age_s=60)  # stopped beating a minute ago
    with service.ctx.session_scope() as session:
        live = workers.live_workers(session, settings)
        assert [w.id for w in live] == ["cpu-worker"]
        assert workers.workers_per_queue(live) == {"gpu": 0, "cpu": 1}
        assert workers.route_queue(session, settings) == "cpu"
        # A GPU worker serving only the cpu queue does not make gpu a destination.
        workers.record_heartbeat(session, "gpu-on-cpu", queues=["cpu"], device="cuda")
        session.flush()
        assert workers.route_queue(session, settings) == "cpu"
        workers.record_heartbeat(session, "dead-gpu", queues=["gpu", "cpu"], device="cuda")
        session.flush()
        assert workers.route_queue(session, settings) == "gpu"
        assert workers.route_queue(session, Settings(default_queue="cpu")) == "cpu"
        report = workers.report(session, settings)
        assert report["live"] == {"gpu": 1, "cpu": 3} and report["missing"] == []


def test_an_unknown_default_queue_is_a_start_up_error() -> None:
    with pytest.raises(ValueError, match="auto, gpu, cpu"):
        Settings(default_queue="fast")
    assert Settings(default_queue=" GPU ").default_queue == "gpu"


def test_a_job_nobody_serves_gets_one_no_worker_event(
    make_service: Callable[..., Service],
) -> None:
    service = make_service(CAKE_NO_WORKER_AFTER_S="0")
    served = service.add_job(WINE, queue="cpu")
    unserved = service.add_job(WINE, queue="gpu")
    _beat(service, "cpu-only", ["cpu"], "cpu")

    assert _flag(service) == [unserved]
    assert _flag(service) == []  # once per stay in the queue, not on every look
    assert _no_worker_events(service, unserved) == 1 and _no_worker_events(service, served) == 0
    (event,) = [e for e in service.events(unserved) if e.type == workers.NO_WORKER]
    assert event.level == "warning" and "gpu queue" in event.message
    assert event.data == {"queue": "gpu", "live_workers": 0}

    # The job starts somewhere, is handed back, and again nobody serves its queue: told again.
    token = jobs.claim_job(service.ctx, unserved, "w1")
    assert token is not None
    assert jobs.requeue_job(service.ctx, unserved, token, reason="test", enqueue=lambda *_: None)
    assert _flag(service) == [unserved]
    assert _no_worker_events(service, unserved) == 2

    # A job that is no longer queued is left alone.
    with service.ctx.session_scope() as session:
        session.get(Job, served).queue = "gpu"
        jobs.request_cancel(session, served)
    assert _flag(service) == []


def _cake_worker(data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    env["CAKE_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "cake_cli.main", "worker", "--queues", "cpu"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_worker_refuses_an_empty_database(tmp_path: Path) -> None:
    run = _cake_worker(tmp_path / "data", tmp_path)
    assert run.returncode != 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "no schema" in lines[0] and "run `cake db upgrade`" in lines[0], lines[0]
    assert run.stdout == ""


def test_a_worker_refuses_a_database_at_another_migration(tmp_path: Path) -> None:
    data = tmp_path / "data"
    upgrade_database("0002", url=f"sqlite:///{data / 'cake.db'}")
    run = _cake_worker(data, tmp_path)
    assert run.returncode != 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "at migration 0002" in lines[0] and "run `cake db upgrade`" in lines[0], lines[0]


def test_a_celery_started_worker_refuses_an_empty_database_too(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    env["CAKE_DATA_DIR"] = str(tmp_path / "data")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "--queues",
            "cpu",
            "--pool",
            "solo",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "run `cake db upgrade`" in errors[0], run.stderr
    assert "webhook round failed" not in run.stderr + run.stdout
