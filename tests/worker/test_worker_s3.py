"""Checkpoints and artifacts on S3, through a real S3-compatible server (moto's server mode)."""

from __future__ import annotations

import torch
from worker_support import S3_BUCKET as BUCKET

from cake_shared.storage import S3Store
from worker.checkpoints import ObjectStoreCheckpoints
from worker.runner import process_job

PREFIX = "svc"


def test_checkpoints_round_trip_on_s3(s3_endpoint):
    store = S3Store(BUCKET, PREFIX, endpoint_url=s3_endpoint)
    checkpoints = ObjectStoreCheckpoints(store, "job_x", attempt=1)
    assert checkpoints.load("synthesis/000000") is None
    state = {"x": torch.randn(4, 3), "labels": torch.arange(4), "seconds": 1.5, "log": {"a": 1.0}}
    checkpoints.save("synthesis/000000", state)
    checkpoints.save("training", {"epoch": 2, "student": {"w": torch.ones(2)}})
    assert sorted(checkpoints.keys()) == ["synthesis/000000", "training"]
    assert store.list("jobs/job_x/") == [
        "jobs/job_x/attempts/1/checkpoints/synthesis/000000.pt",
        "jobs/job_x/attempts/1/checkpoints/training.pt",
    ]
    loaded = checkpoints.load("synthesis/000000")
    assert torch.equal(loaded["x"], state["x"]) and loaded["log"] == {"a": 1.0}
    checkpoints.clear()
    assert checkpoints.keys() == []


def test_job_on_s3_uploads_artifacts_and_clears_checkpoints(
    make_service, s3_endpoint, digits_teacher
):
    service = make_service(
        CAKE_STORE_URL=f"s3://{BUCKET}/{PREFIX}", CAKE_S3_ENDPOINT_URL=s3_endpoint
    )
    assert isinstance(service.store, S3Store)
    job_id = service.add_job(digits_teacher)
    assert process_job(service.ctx, job_id) == "succeeded"
    assert service.get_job(job_id).status == "succeeded"
    keys = service.store.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/jobs/{job_id}/")
    names = sorted(obj["Key"] for obj in keys.get("Contents", []))
    artifacts = ["curves.png", "manifest.json", "report.md", "samples.png", "student.onnx"]
    if service.get_job(job_id).metrics["int8_kept"] == 1.0:
        artifacts.append("student.int8.onnx")
    assert names == sorted(
        f"{PREFIX}/jobs/{job_id}/attempts/1/artifacts/{name}" for name in [*artifacts, "student.pt"]
    )
