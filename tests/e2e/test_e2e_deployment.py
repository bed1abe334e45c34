"""End to end on the split deployment: PostgreSQL, Redis, S3 (moto's server), ``cake serve
--no-worker`` and a separate ``cake worker``, driven through real HTTP by a client that knows
only API.md. A digits CNN (trained on scikit-learn's digits) is distilled with the ``fast``
preset into a LeNet-5-Half that must score within 10% of the teacher on the held-out real
split; then a long job is canceled while it runs and the worker takes the next one."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
from typing import Any

import numpy as np
import psycopg
import torch
from e2e_support import FINISHED, Deployment, all_events, expect, poll_job, read_sse

from cake_shared.job_keys import artifact_key

JOB_TIMEOUT_S = 360  # a `fast` digits job takes about a minute on an idle 2-core machine
RUNNING_TIMEOUT_S = 120
CANCEL_TIMEOUT_S = 90
SHA256 = re.compile(r"[0-9a-f]{64}")


def upload_teacher(deployment: Deployment, teacher: Any) -> dict[str, Any]:
    with open(teacher.path, "rb") as fh:
        response = deployment.client.post(
            "/v1/teachers",
            files={"file": ("digits_cnn.pt", fh, "application/octet-stream")},
            data={"input_shape": json.dumps(list(teacher.input_shape)), "name": "digits"},
        )
    return expect(response, 201)


def accuracy(model: torch.jit.ScriptModule, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def test_fast_job_on_postgres_redis_s3_and_a_separate_worker(
    deployment: Deployment, digits_teacher: Any
) -> None:
    client = deployment.client
    ready = expect(client.get("/readyz"), 200)
    assert ready["checks"] == {"database": "ok", "store": "ok", "broker": "ok"}, ready

    teacher = upload_teacher(deployment, digits_teacher)
    assert teacher["id"].startswith("tch_")
    assert teacher["input_shape"] == [1, 8, 8] and teacher["num_classes"] == 10
    with open(digits_teacher.eval_path, "rb") as fh:
        dataset = expect(client.post("/v1/datasets", files={"file": ("digits_test.npz", fh)}), 201)
    held_out = np.load(digits_teacher.eval_path)
    x, y = held_out["x"].astype(np.float32), held_out["y"]
    assert dataset["id"].startswith("ds_")
    assert dataset["num_examples"] == len(y) and dataset["input_shape"] == [1, 8, 8]

    created = expect(
        client.post(
            "/v1/jobs",
            json={
                "teacher_id": teacher["id"],
                "preset": "fast",
                "eval_dataset_id": dataset["id"],
                "student": {"arch": "lenet5", "width": 0.5},
            },
        ),
        202,
    )
    job_id = created["id"]
    assert created["status"] == "queued" and created["spec"]["preset"] == "fast"
    assert created["spec"]["student"] == {
        "arch": "lenet5",
        "width": 0.5,
        "width_reason": "given in the spec",
    }

    history: list[dict[str, Any]] = []
    job = poll_job(
        client,
        job_id,
        lambda j: j["status"] in FINISHED,
        JOB_TIMEOUT_S,
        "to finish",
        history=history,
        check=deployment.check_alive,
    )
    assert job["status"] == "succeeded", (job["error"], deployment.logs())

    # Progress is monotone, and the polls saw the job run through synthesis and training.
    progress = [j["progress"] for j in history]
    assert all(b >= a for a, b in itertools.pairwise(progress)), progress
    assert progress[-1] == 1.0
    seen = [j["phase"] for j in history]
    assert "running" in {j["status"] for j in history}
    assert "synthesizing" in seen and "training" in seen, seen
    assert seen.index("synthesizing") < seen.index("training"), seen

    metrics = job["metrics"]
    for key in ("agreement_synthetic", "teacher_accuracy", "student_accuracy", "agreement_eval"):
        assert key in metrics, metrics

    # The log has every phase change, in order; the finished job's SSE stream ends.
    events = all_events(client, job_id)
    assert all(e["id"].startswith("evt_") for e in events)
    phases = [e["data"]["phase"] for e in events if e["type"] == "phase"]
    for phase in ("synthesizing", "training", "evaluating", "exporting"):
        assert phase in phases, phases
    assert phases.index("synthesizing") < phases.index("training"), phases
    streamed = read_sse(client, job_id, timeout=60)
    assert streamed[-1][0] == "end" and json.loads(streamed[-1][1]) == {"status": "succeeded"}
    assert [json.loads(d)["id"] for _, d in streamed[:-1]] == [e["id"] for e in events]

    # Artifacts, in S3; the student downloads with its ETag and matches its sha256.
    listed = {a["name"]: a for a in expect(client.get(f"/v1/jobs/{job_id}/artifacts"), 200)["data"]}
    for name in ("student.pt", "manifest.json", "samples.png", "curves.png", "report.md"):
        assert name in listed, listed
        assert SHA256.fullmatch(listed[name]["sha256"]) and listed[name]["size_bytes"] > 0
    # Under the attempt that won (the first: nothing failed here), as the job row says.
    assert {f"svc/{artifact_key(job_id, 1, n)}" for n in listed} <= set(
        deployment.s3.keys(f"jobs/{job_id}/")
    )
    download = client.get(f"/v1/jobs/{job_id}/student")
    assert download.status_code == 200, download.text
    data = download.content
    sha = listed["student.pt"]["sha256"]
    assert (
        hashlib.sha256(data).hexdigest() == sha and len(data) == listed["student.pt"]["size_bytes"]
    )
    assert download.headers["etag"] == f'"{sha}"'
    again = client.get(f"/v1/jobs/{job_id}/student", headers={"If-None-Match": f'"{sha}"'})
    assert again.status_code == 304
    manifest = expect(client.get(f"/v1/jobs/{job_id}/artifacts/manifest.json"), 200)
    assert manifest["teacher"]["sha256"] == teacher["sha256"], manifest

    # Plain torch runs the student; it agrees with the teacher on the held-out real split.
    student = torch.jit.load(io.BytesIO(data))
    teacher_model = torch.jit.load(str(digits_teacher.path))
    student_acc, teacher_acc = accuracy(student, x, y), accuracy(teacher_model, x, y)
    print(f"held-out accuracy: student {student_acc:.4f}, teacher {teacher_acc:.4f}; {metrics}")
    assert student_acc >= 0.9 * teacher_acc, (student_acc, teacher_acc, metrics)
    assert abs(metrics["teacher_accuracy"] - teacher_acc) < 0.01, (metrics, teacher_acc)
    assert abs(metrics["student_accuracy"] - student_acc) < 0.01, (metrics, student_acc)

    # The state lives in PostgreSQL, the messages went through Redis.
    with psycopg.connect(deployment.postgres_url) as conn:
        row = conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row == ("succeeded",)
    assert deployment.redis.keys("_kombu*"), "no Celery (kombu) keys in the Redis database"


def test_cancel_a_running_job_then_the_worker_takes_the_next(
    deployment: Deployment, digits_teacher: Any
) -> None:
    client = deployment.client
    teacher_id = upload_teacher(deployment, digits_teacher)["id"]
    job_id = expect(
        client.post("/v1/jobs", json={"teacher_id": teacher_id, "preset": "default"}), 202
    )["id"]
    poll_job(
        client,
        job_id,
        lambda j: j["status"] != "queued",
        RUNNING_TIMEOUT_S,
        "to start",
        check=deployment.check_alive,
    )

    answer = expect(client.post(f"/v1/jobs/{job_id}/cancel"), 200)
    assert answer["id"] == job_id and answer["status"] in ("running", "canceled"), answer
    job = poll_job(
        client,
        job_id,
        lambda j: j["status"] in FINISHED,
        CANCEL_TIMEOUT_S,
        "to end after cancel",
        check=deployment.check_alive,
    )
    assert job["status"] == "canceled", (job, deployment.logs())
    types = [e["type"] for e in all_events(client, job_id)]
    assert "cancel_requested" in types, types
    refused = client.get(f"/v1/jobs/{job_id}/student")
    assert refused.status_code == 409 and refused.json()["code"] == "conflict", refused.text

    tiny = expect(
        client.post(
            "/v1/jobs",
            json={
                "teacher_id": teacher_id,
                "synthesis": {"num_samples": 200, "steps": 5},
                "training": {"epochs": 1},
            },
        ),
        202,
    )
    done = poll_job(
        client,
        tiny["id"],
        lambda j: j["status"] in FINISHED,
        RUNNING_TIMEOUT_S,
        "to finish",
        check=deployment.check_alive,
    )
    assert done["status"] == "succeeded", (done["error"], deployment.logs())
    assert done["attempts"] == 1
