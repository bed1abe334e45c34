"""The job runner in-process: real teachers, SQLite, the local store and the filesystem broker."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
import torch
from sqlalchemy import select, update
from worker_support import TINY_SPEC, Service, wait_for

from cake_core.config import WIDTH_GIVEN, WIDTH_PENDING, resolve_spec
from cake_core.students import choose_width
from cake_shared import jobs
from cake_shared.job_keys import parse_job_key
from cake_shared.models import Artifact, Job, Teacher, utcnow
from cake_shared.storage import ObjectStore
from worker.checkpoints import ObjectStoreCheckpoints
from worker.runner import claim_is_dead, process_job


def _checkpoints(store: ObjectStore, job_id: str) -> list[str]:
    """The job's checkpoint objects, of every attempt (per-attempt folders and the old one)."""
    return [
        key
        for key in store.list(f"jobs/{job_id}/")
        if (parsed := parse_job_key(key)) is not None and parsed.area == "checkpoints"
    ]


REQUIRED_METRICS = {
    "agreement_synthetic",
    "teacher_parameters",
    "student_parameters",
    "synthesis_seconds",
    "training_seconds",
    "samples_per_second",
}
# Long enough to be canceled or interrupted mid-synthesis on any machine.
SLOW_SPEC = {"synthesis": {"num_samples": 400, "steps": 100_000}, "training": {"epochs": 2}}


def _run_in_thread(service: Service, job_id: str, **kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        outcome["result"] = process_job(service.ctx, job_id, **kwargs)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_job_succeeds_with_artifacts_events_and_monotone_progress(any_service, digits_teacher):
    job_id = any_service.add_job(digits_teacher, TINY_SPEC, with_eval=True)
    thread, outcome = _run_in_thread(any_service, job_id)
    seen: list[float] = []
    while thread.is_alive():
        seen.append(any_service.get_job(job_id).progress)
        time.sleep(0.01)
    thread.join()
    assert outcome["result"] == "succeeded"

    job = any_service.get_job(job_id)
    assert (job.status, job.phase, job.progress, job.attempts) == ("succeeded", "succeeded", 1.0, 1)
    assert job.artifacts_attempt == 1
    assert job.error is None and job.claim_token is None
    assert job.started_at is not None and job.finished_at >= job.started_at
    assert REQUIRED_METRICS | {"teacher_accuracy", "student_accuracy", "agreement_eval"} <= set(
        job.metrics
    )
    assert job.metrics["teacher_accuracy"] == pytest.approx(digits_teacher.accuracy)
    seen.append(job.progress)
    assert seen == sorted(seen)

    with any_service.ctx.session_scope() as session:
        artifacts = {a.name: a for a in session.scalars(select(Artifact))}
    int8_kept = job.metrics["int8_kept"] == 1.0
    assert set(artifacts) == {
        "student.pt",
        "student.onnx",
        "manifest.json",
        "samples.png",
        "curves.png",
        "report.md",
    } | ({"student.int8.onnx"} if int8_kept else set())
    assert artifacts["student.onnx"].content_type == "application/octet-stream"
    assert artifacts["manifest.json"].content_type == "application/json"
    assert artifacts["samples.png"].content_type == "image/png"
    assert artifacts["curves.png"].content_type == "image/png"
    assert artifacts["report.md"].content_type == "text/markdown; charset=utf-8"
    assert artifacts["student.pt"].content_type == "application/octet-stream"
    for name, row in artifacts.items():
        data = any_service.store.get_bytes(row.storage_key)
        assert row.storage_key == f"jobs/{job_id}/attempts/1/artifacts/{name}"
        assert (len(data), hashlib.sha256(data).hexdigest()) == (row.size_bytes, row.sha256)
    student_path = any_service.data_dir / "student.pt"
    student_path.write_bytes(any_service.store.get_bytes(artifacts["student.pt"].storage_key))
    student = torch.jit.load(str(student_path))
    assert student(torch.zeros(2, *digits_teacher.input_shape)).shape == (2, 10)
    assert _checkpoints(any_service.store, job_id) == []

    log = any_service.events(job_id)
    types = [e.type for e in log]
    assert types[0] == "started" and types[-1] == "succeeded"
    phases = [e.data["phase"] for e in log if e.type == "phase"]
    assert phases == ["synthesizing", "training", "evaluating", "exporting"]
    assert types.count("progress") >= 1  # one per synthesis chunk
    epochs = [e for e in log if e.type == "metrics" and e.data["phase"] == "training"]
    assert [e.data["metrics"]["epoch"] for e in epochs] == [1.0, 2.0]
    progress = [e.data["progress"] for e in log if "progress" in e.data]
    assert progress == sorted(progress)
    assert all(e.data.get("attempt") == 1 for e in log if e.type != "succeeded")


@pytest.mark.parametrize("width", [None, 1.0])
def test_the_job_records_its_students_width_and_why(any_service, wine_teacher, width):
    """As the API stores it: the resolved spec, width null (chosen when the job runs) or given.
    The succeeded job's spec holds the width the worker used and why; a student larger than
    its teacher is a warning event."""
    data = {**TINY_SPEC, "student": {"width": width}}
    spec = resolve_spec(data, num_classes=3).to_dict()
    spec["student"]["arch"] = "mlp"
    job_id = any_service.add_job(wine_teacher, {**spec, "metadata": {"run": "ci"}})
    assert any_service.get_job(job_id).spec["student"]["width_reason"] == (
        WIDTH_PENDING if width is None else WIDTH_GIVEN
    )
    assert process_job(any_service.ctx, job_id) == "succeeded"

    job = any_service.get_job(job_id)
    m = job.metrics
    assert m["compression"] == pytest.approx(m["teacher_parameters"] / m["student_parameters"])
    student = job.spec["student"]
    (event,) = [e for e in any_service.events(job_id) if e.type == "student"]
    assert event.data["width"] == student["width"]
    assert event.data["width_reason"] == student["width_reason"]
    assert event.data["student_parameters"] == m["student_parameters"]
    assert event.data["attempt"] == 1 and event.data["phase"] == "synthesizing"
    if width is None:
        choice = choose_width("mlp", [13], 3, int(m["teacher_parameters"]))
        assert student == {"arch": "mlp", "width": choice.width, "width_reason": choice.reason}
        assert m["student_parameters"] <= m["teacher_parameters"] / 2
        assert event.level == "info"
    else:
        assert student == {"arch": "mlp", "width": 1.0, "width_reason": WIDTH_GIVEN}
        assert m["student_parameters"] > m["teacher_parameters"]
        assert event.level == "warning" and "larger than its teacher" in event.message
    # Only the student changed: the rest of the spec is what the API stored.
    assert {k: v for k, v in job.spec.items() if k != "student"} == {
        **{k: v for k, v in spec.items() if k != "student"},
        "metadata": {"run": "ci"},
    }


def test_cancel_requested_mid_run_ends_canceled(any_service, wine_teacher):
    job_id = any_service.add_job(wine_teacher, SLOW_SPEC)
    thread, outcome = _run_in_thread(any_service, job_id)
    wait_for(
        lambda: any_service.get_job(job_id).phase == "synthesizing",
        30,
        "the job to start synthesizing",
    )
    with any_service.ctx.session_scope() as session:
        assert jobs.request_cancel(session, job_id) == "running"
    requested = time.monotonic()
    thread.join(30)
    assert not thread.is_alive()
    assert time.monotonic() - requested < 10
    assert outcome["result"] == "canceled"
    job = any_service.get_job(job_id)
    assert (job.status, job.phase) == ("canceled", "canceled")
    assert job.finished_at is not None
    types = [e.type for e in any_service.events(job_id)]
    assert "cancel_requested" in types and types[-1] == "canceled"
    assert _checkpoints(any_service.store, job_id) == []


def test_cancel_of_a_queued_job_is_immediate_and_never_runs(service, wine_teacher):
    job_id = service.add_job(wine_teacher)
    with service.ctx.session_scope() as session:
        assert jobs.request_cancel(session, job_id) == "canceled"
    assert process_job(service.ctx, job_id) == "skipped"
    job = service.get_job(job_id)
    assert (job.status, job.attempts, job.started_at) == ("canceled", 0, None)


def test_second_claim_is_refused(any_service, wine_teacher):
    job_id = any_service.add_job(wine_teacher)
    ctx = any_service.ctx
    token = jobs.claim_job(ctx, job_id, "worker-a:1")
    assert token is not None
    assert jobs.claim_job(ctx, job_id, "worker-b:2") is None
    # A redelivered message while the first worker is alive does nothing.
    assert process_job(ctx, job_id, worker_id="worker-c:3") == "skipped"
    job = any_service.get_job(job_id)
    assert (job.status, job.claimed_by, job.attempts) == ("running", "worker-a:1", 1)
    assert jobs.finish_job(ctx, job_id, token, "succeeded", metrics={})
    assert jobs.claim_job(ctx, job_id, "worker-b:2") is None  # finished jobs stay finished
    assert jobs.claim_job(ctx, "job_does_not_exist", "worker-b:2") is None


def _age_heartbeat(service: Service, job_id: str, seconds: float) -> None:
    with service.ctx.session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_stale_heartbeat_is_reclaimed_and_the_old_worker_is_fenced_off(any_service, wine_teacher):
    job_id = any_service.add_job(wine_teacher)
    old = jobs.claim_job(any_service.ctx, job_id, "worker-a:1")
    assert old is not None
    assert jobs.update_progress(any_service.ctx, job_id, old, "synthesizing", 0.3)
    _age_heartbeat(any_service, job_id, 600)  # older than job_heartbeat_timeout_s (300)
    new = jobs.claim_job(any_service.ctx, job_id, "worker-b:2")
    assert new is not None and new != old
    job = any_service.get_job(job_id)
    assert (job.claimed_by, job.attempts) == ("worker-b:2", 2)
    # The old worker's writes no longer land; the new worker's do, and progress never drops.
    assert not jobs.heartbeat(any_service.ctx, job_id, old)
    assert not jobs.update_progress(any_service.ctx, job_id, old, "training", 0.9)
    assert not jobs.finish_job(any_service.ctx, job_id, old, "succeeded", metrics={})
    assert not jobs.claim_state(any_service.ctx, job_id, old).owned
    assert jobs.update_progress(any_service.ctx, job_id, new, "synthesizing", 0.1)
    assert any_service.get_job(job_id).progress == pytest.approx(0.3)
    assert jobs.finish_job(
        any_service.ctx, job_id, new, "failed", error={"code": "x", "message": "y"}
    )


def test_sweeper_requeues_stale_and_dead_claims_then_gives_up(any_service, wine_teacher):
    stale = any_service.add_job(wine_teacher)
    assert jobs.claim_job(any_service.ctx, stale, "far-away-host:1") is not None
    _age_heartbeat(any_service, stale, 600)
    # A claim by a process of this host that has exited is requeued without waiting.
    dead = any_service.add_job(wine_teacher, queue="gpu")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert jobs.claim_job(any_service.ctx, dead, f"{socket.gethostname()}:{proc.pid}") is not None
    alive = any_service.add_job(wine_teacher)
    assert jobs.claim_job(any_service.ctx, alive, "far-away-host:2") is not None

    result = jobs.requeue_stale_jobs(any_service.ctx, is_dead_claim=claim_is_dead)
    assert sorted(result.requeued) == sorted([stale, dead])
    assert any_service.get_job(alive).status == "running"
    for job_id in (stale, dead):
        job = any_service.get_job(job_id)
        assert (job.status, job.claim_token, job.attempts) == ("queued", None, 1)
        assert any_service.events(job_id)[-1].type == "requeued"
    assert (any_service.ctx.queue.depth("cpu"), any_service.ctx.queue.depth("gpu")) == (1, 1)

    # Out of attempts: the next stale heartbeat fails the job with a clear code.
    for attempt in (2, 3):
        assert jobs.claim_job(any_service.ctx, stale, f"far-away-host:{attempt}") is not None
        _age_heartbeat(any_service, stale, 600)
        result = jobs.requeue_stale_jobs(any_service.ctx)
    assert result.failed == [stale]
    job = any_service.get_job(stale)
    assert job.status == "failed" and job.error["code"] == "max_attempts"
    assert "3 attempts" in job.error["message"]


def test_lost_queued_jobs_are_published_again_once(any_service, wine_teacher):
    lost = any_service.add_job(wine_teacher)  # its publish "failed": no message
    waiting = any_service.add_job(wine_teacher)
    ctx = any_service.ctx
    ctx.queue.enqueue(waiting, "cpu")
    assert jobs.requeue_lost_queued_jobs(ctx, older_than_s=3600) == []  # too young to be lost
    assert jobs.requeue_lost_queued_jobs(ctx, older_than_s=0) == [lost]  # one message short
    assert ctx.queue.depth("cpu") == 2
    assert jobs.requeue_lost_queued_jobs(ctx, older_than_s=0) == []  # the broker has both now
    assert process_job(ctx, lost) == "succeeded"
    assert process_job(ctx, lost) == "skipped"  # a duplicate message does nothing


def test_interrupted_job_resumes_from_checkpoints_without_redoing_chunks(
    any_service, digits_teacher
):
    spec = {
        "synthesis": {"num_samples": 400, "steps": 10, "chunk_batches": 1},
        "training": {"epochs": 2},
    }
    job_id = any_service.add_job(digits_teacher, spec)
    # Make the first training checkpoint impossible to write (a folder is in its way): the
    # first attempt dies right after synthesis with an internal error.
    first_attempt = any_service.data_dir / "store" / "jobs" / job_id / "attempts" / "1"
    blocker = first_attempt / "checkpoints" / "training.pt"
    blocker.mkdir(parents=True)
    assert process_job(any_service.ctx, job_id) == "requeued"
    job = any_service.get_job(job_id)
    assert (job.status, job.attempts, job.claim_token) == ("queued", 1, None)
    keys = ObjectStoreCheckpoints(any_service.store, job_id, attempt=2).keys()
    assert keys == [f"synthesis/{i:06d}" for i in range(4)]
    assert any_service.events(job_id)[-1].type == "requeued"
    assert any_service.ctx.queue.depth("cpu") == 1  # the retry is on its way

    blocker.rmdir()
    assert process_job(any_service.ctx, job_id) == "succeeded"
    job = any_service.get_job(job_id)
    assert (job.status, job.attempts, job.artifacts_attempt) == ("succeeded", 2, 2)
    with any_service.ctx.session_scope() as session:
        keys = set(session.scalars(select(Artifact.storage_key).where(Artifact.job_id == job_id)))
    assert keys and all(k.startswith(f"jobs/{job_id}/attempts/2/artifacts/") for k in keys)
    log = any_service.events(job_id)
    first = [e for e in log if e.data.get("attempt") == 1]
    second = [e for e in log if e.data.get("attempt") == 2]
    assert sum(e.type == "progress" for e in first) == 4
    assert sum(e.type == "progress" for e in second) == 0  # no chunk synthesized again
    resumed = [e for e in second if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].data["synthesis_chunks"] == 4
    assert job.metrics["num_samples"] == 400
    assert _checkpoints(any_service.store, job_id) == []


def test_internal_errors_fail_after_the_last_attempt_without_leaking_paths(
    make_service, digits_teacher
):
    service = make_service(CAKE_JOB_MAX_ATTEMPTS="1")
    job_id = service.add_job(digits_teacher)
    first_attempt = service.data_dir / "store" / "jobs" / job_id / "attempts" / "1"
    blocker = first_attempt / "checkpoints" / "training.pt"
    blocker.mkdir(parents=True)
    assert process_job(service.ctx, job_id) == "failed"
    job = service.get_job(job_id)
    assert job.status == "failed" and job.error["code"] == "internal"
    assert str(service.data_dir) not in job.error["message"]
    assert "Traceback" not in job.error["message"]
    assert service.events(job_id)[-1].type == "failed"


def test_shutdown_hands_the_job_back_without_counting_the_attempt(service, wine_teacher):
    job_id = service.add_job(wine_teacher, SLOW_SPEC)
    shutdown = threading.Event()
    thread, outcome = _run_in_thread(service, job_id, shutdown=shutdown)
    wait_for(
        lambda: service.get_job(job_id).phase == "synthesizing", 30, "the job to start synthesizing"
    )
    shutdown.set()
    thread.join(30)
    assert outcome["result"] == "requeued"
    job = service.get_job(job_id)
    assert (job.status, job.attempts, job.claim_token) == ("queued", 0, None)
    assert service.ctx.queue.depth("cpu") == 1


@pytest.mark.parametrize(
    ("spec", "teacher_bytes", "code"),
    [
        (TINY_SPEC, b"this is not a TorchScript archive", "teacher_invalid"),
        ({"synthesis": {"steps": 0}}, None, "validation_error"),
        ({"student": {"arch": "no-such-arch"}}, None, "validation_error"),
    ],
)
def test_invalid_input_fails_with_its_code(service, wine_teacher, spec, teacher_bytes, code):
    job_id = service.add_job(wine_teacher, spec, teacher_bytes=teacher_bytes)
    assert process_job(service.ctx, job_id) == "failed"
    job = service.get_job(job_id)
    assert job.status == "failed" and job.error["code"] == code, job.error
    assert set(job.error) == {"code", "message"}
    assert str(service.data_dir) not in job.error["message"] and "/tmp" not in job.error["message"]
    assert (
        service.events(job_id)[-1].type == "failed" and service.events(job_id)[-1].level == "error"
    )


def test_missing_teacher_object_fails_with_teacher_invalid(service, wine_teacher):
    job_id = service.add_job(wine_teacher)
    with service.ctx.session_scope() as session:
        storage_key = session.get(Teacher, session.get(Job, job_id).teacher_id).storage_key
    service.store.delete(storage_key)
    assert process_job(service.ctx, job_id) == "failed"
    assert service.get_job(job_id).error["code"] == "teacher_invalid"
