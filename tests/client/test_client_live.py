"""The Python client against a real ``cake serve`` (SQLite, filesystem broker, Celery worker).

Jobs use a tiny spec (about a second of work): these tests check the client's contract with
the service, not the quality of distillation (the CLI test does one real run).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from client_support import BIG_SPEC, DIGITS, TINY_SPEC, WINE, WINE_EVAL, CakeServer

from cake_client import (
    Client,
    Conflict,
    JobProgress,
    NotFound,
    TeacherInvalid,
    ValidationError,
)

WAIT_S = 120


@pytest.fixture
def client(cake_server: CakeServer) -> Client:
    return Client(cake_server.url, timeout=60)


def test_teachers_upload_get_list_pages_and_delete(client: Client) -> None:
    sent: list[tuple[int, int]] = []

    def on_progress(done: int, total: int) -> None:
        sent.append((done, total))

    uploaded = [
        client.teachers.upload(WINE, [13], name=f"wine-{i}", on_progress=on_progress)
        for i in range(3)
    ]
    assert sent[-1][0] == sent[-1][1] > WINE.stat().st_size  # the whole multipart body
    first = uploaded[0]
    assert first.id.startswith("tch_") and first.input_shape == (13,)
    assert first.num_classes == 3 and first.parameters > 0
    assert first.sha256 == hashlib.sha256(WINE.read_bytes()).hexdigest()
    assert client.teachers.get(first.id).name == "wine-0"

    listed = [t.id for t in client.teachers.list(limit=1)]  # one per page: follows next_after
    ids = [t.id for t in uploaded]
    assert [i for i in listed if i in ids] == ids[::-1]  # newest first
    assert listed == sorted(listed, reverse=True)
    page = client.teachers.list_page(limit=1)
    assert page.has_more and page.next_after == page.data[0].id

    client.teachers.delete(uploaded[1].id)
    with pytest.raises(NotFound) as info:
        client.teachers.get(uploaded[1].id)
    assert info.value.code == "not_found" and info.value.status == 404
    assert uploaded[1].id not in [t.id for t in client.teachers.list()]


def test_job_create_wait_and_verified_download(client: Client, tmp_path: Path) -> None:
    teacher = client.teachers.upload(WINE, "13")
    dataset = client.datasets.upload(WINE_EVAL)
    assert dataset.num_examples > 0 and dataset.input_shape == (13,)
    job = client.jobs.create(
        teacher.id, spec=TINY_SPEC, eval_dataset_id=dataset.id, seed=1, metadata={"t": "x"}
    )
    assert job.status == "queued" and job.spec["training"]["epochs"] == 2
    assert job.metadata == {"t": "x"} and job.eval_dataset_id == dataset.id

    reports: list[JobProgress] = []
    final = job.wait(timeout=WAIT_S, on_progress=reports.append)
    assert final.status == "succeeded", final.error
    assert reports, "on_progress was never called"
    progress = [r.progress for r in reports]
    assert progress == sorted(progress), "progress must never go backwards"
    assert progress[-1] == 1.0
    assert {"synthesizing", "training"} <= {r.phase for r in reports}
    assert {"agreement_synthetic", "student_accuracy"} <= set(final.metrics)

    path = final.download_student(tmp_path / "student.pt")
    listed = {a.name: a for a in final.artifacts()}
    assert hashlib.sha256(path.read_bytes()).hexdigest() == listed["student.pt"].sha256
    umask = os.umask(0o022)
    os.umask(umask)
    # the mode any new file of this user gets (0644 under umask 022), not a temp file's 0600
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["student.pt"]  # no .part file left
    student = torch.jit.load(str(path), map_location="cpu")
    x = torch.from_numpy(np.load(WINE_EVAL)["x"].astype(np.float32))
    assert student(x).shape == (x.shape[0], 3)

    events = list(client.jobs.events(final.id, limit=2))  # several pages
    assert events[0].type == "queued" and events[-1].type == "succeeded"
    streamed = list(client.jobs.stream_events(final.id))  # a finished job: replay, then end
    assert [e.id for e in streamed] == [e.id for e in events]
    assert [e.id for e in client.jobs.events(final.id, after=events[2].id)] == [
        e.id for e in events[3:]
    ]
    assert final.id in [j.id for j in client.jobs.list(status="succeeded")]


def test_one_shot_job_with_an_image_teacher(client: Client, tmp_path: Path) -> None:
    job = client.jobs.create_oneshot(DIGITS, (1, 8, 8), spec={**TINY_SPEC, "preset": "fast"})
    assert job.teacher_id.startswith("tch_")
    final = job.wait(timeout=WAIT_S, poll_interval=0.2)
    assert final.succeeded, final.error
    names = {a.name for a in final.artifacts()}
    assert {"student.pt", "manifest.json", "samples.png"} <= names
    manifest = client.jobs.download(final.id, "manifest.json", tmp_path)
    assert manifest == tmp_path / "manifest.json"
    document = json.loads(manifest.read_text())  # a JSON document, checked by sha256 on the way
    assert final.manifest() == document

    # the deployment table, typed: a row per file the job kept, each with its latency
    deployment = final.deployment()
    assert deployment is not None and deployment.raw == document["deployment"]
    assert deployment.onnx.kept and deployment.onnx.opset == document["deployment"]["onnx"]["opset"]
    kept = ["teacher.pt", "student.pt", "student.onnx"]
    kept += ["student.int8.onnx"] if deployment.int8.kept else []
    assert [row.artifact for row in deployment.table] == kept
    assert ("student.int8.onnx" in names) == deployment.int8.kept and deployment.int8.reason
    listed = {a.name: a for a in final.artifacts()}
    for row in deployment.table[1:]:
        assert row.size_bytes == listed[row.artifact].size_bytes and row.parameters > 0
        assert row.latency_ms_batch_1 is not None and row.latency_ms_batch_1 > 0
        assert row.agreement_teacher is not None and 0 <= row.agreement_teacher <= 1
    onnx = final.download_onnx(tmp_path / "student.onnx")
    assert hashlib.sha256(onnx.read_bytes()).hexdigest() == listed["student.onnx"].sha256


def test_problems_are_typed_exceptions(client: Client, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        client.jobs.get("job_doesnotexist")
    with pytest.raises(NotFound):
        client.teachers.get("tch_doesnotexist")

    teacher = client.teachers.upload(WINE, [13])
    with pytest.raises(ValidationError) as invalid:
        client.jobs.create(teacher.id, spec={"synthesis": {"steps": 10, "bogus": 1}})
    assert invalid.value.code == "validation_error" and invalid.value.status == 422
    assert {"loc": ["body", "synthesis", "bogus"], "msg": "unknown field"} in invalid.value.errors
    # The MLflow server keyword reaches the service, which lets no tenant name one by default.
    with pytest.raises(ValidationError) as refused_mlflow:
        client.jobs.create(teacher.id, mlflow_tracking_uri="http://127.0.0.1:9/mlflow")
    [error] = refused_mlflow.value.errors
    assert error["loc"] == ["body", "mlflow_tracking_uri"], error
    assert "CAKE_MLFLOW_SPEC_TENANTS" in error["msg"]
    with pytest.raises(ValidationError) as reversed_range:
        client.jobs.create(teacher.id, input_range=(1, -1))
    [error] = reversed_range.value.errors
    assert error["loc"] == ["body", "input_range"] and "low < high" in error["msg"], error

    text = tmp_path / "model.pt"
    text.write_text("this is not a TorchScript archive\n")
    with pytest.raises(TeacherInvalid) as refused:
        client.teachers.upload(text, [13])
    assert refused.value.code == "teacher_invalid" and "TorchScript" in refused.value.detail

    # A job far too big to finish: canceled, it never has artifacts to download.
    big = client.jobs.create(teacher.id, spec=BIG_SPEC)
    client.jobs.cancel(big.id)
    final = big.wait(timeout=WAIT_S)
    assert final.status == "canceled"
    with pytest.raises(Conflict) as conflict:
        final.download_student(tmp_path / "student.pt")
    assert conflict.value.status == 409
    assert list(tmp_path.iterdir()) == [text]  # no partial file left behind
