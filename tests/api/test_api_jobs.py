"""Jobs: create (JSON and one-shot), validation, idempotency, list, cancel, delete."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_support import BundledTeacher, FakeQueue, TestClient, assert_problem, upload_teacher

from api.schemas import JobSpecIn, LossWeightsIn, StudentIn, SynthesisIn, TrainingIn
from cake_core.config import (
    PRESETS,
    WIDTH_GIVEN,
    WIDTH_PENDING,
    LossWeights,
    StudentSpec,
    SynthesisSpec,
    TrainingSpec,
)
from cake_shared.models import Job


@pytest.fixture
def wine_id(client: TestClient, wine: BundledTeacher) -> str:
    return upload_teacher(client, wine.path, [13]).json()["id"]


@pytest.fixture
def digits_id(client: TestClient, digits: BundledTeacher) -> str:
    return upload_teacher(client, digits.path, [1, 8, 8]).json()["id"]


def _spec_keys(spec: dict[str, Any]) -> set[str]:
    return {f"{part}.{k}" for part in ("student", "synthesis", "training") for k in spec[part]}


def test_create_fills_and_echoes_every_default(
    client: TestClient, digits_id: str, fake_queue: FakeQueue
) -> None:
    r = client.post("/v1/jobs", json={"teacher_id": digits_id, "metadata": {"run": "ci"}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("job_") and job["object"] == "job"
    assert (job["status"], job["phase"], job["progress"]) == ("queued", "queued", 0.0)
    assert job["teacher_id"] == digits_id
    assert job["metrics"] == {} and job["error"] is None and job["attempts"] == 0
    assert job["metadata"] == {"run": "ci"}
    assert job["started_at"] is None and job["finished_at"] is None
    spec = job["spec"]
    assert spec["preset"] == "default" and spec["seed"] == 0
    # lenet5: the default for [C, H, W]; the width is chosen from the teacher's size when the
    # job runs (the worker records it), and the spec says so until then.
    assert spec["student"] == {"arch": "lenet5", "width": None, "width_reason": WIDTH_PENDING}
    assert spec["synthesis"]["optimizer"] == PRESETS["default"]["synthesis"]["optimizer"]
    expected = (
        {f"student.{k}" for k in StudentSpec.__dataclass_fields__}
        | {f"synthesis.{k}" for k in SynthesisSpec.__dataclass_fields__}
        | {f"training.{k}" for k in TrainingSpec.__dataclass_fields__}
    )
    assert _spec_keys(spec) == expected
    assert fake_queue.sent == [(job["id"], "cpu")]
    assert client.get(f"/v1/jobs/{job['id']}").json() == job


def test_preset_fast_and_tabular_default(client: TestClient, wine_id: str) -> None:
    job = client.post("/v1/jobs", json={"teacher_id": wine_id, "preset": "fast"}).json()
    spec = job["spec"]
    assert spec["preset"] == "fast"
    assert spec["synthesis"]["num_samples"] == PRESETS["fast"]["synthesis"]["num_samples"]
    assert spec["synthesis"]["steps"] == PRESETS["fast"]["synthesis"]["steps"]
    assert spec["training"]["epochs"] == PRESETS["fast"]["training"]["epochs"]
    assert spec["student"]["arch"] == "mlp"
    assert spec["synthesis"]["groups"] == 3  # lowered to the class count


def test_user_values_win_over_the_preset(client: TestClient, wine_id: str) -> None:
    body = {
        "teacher_id": wine_id,
        "preset": "fast",
        "student": {"width": 1.0},
        "synthesis": {"steps": 7, "groups": 3, "batch_size": 30},
        "training": {"epochs": 2, "lr": 1},
        "seed": 42,
    }
    spec = client.post("/v1/jobs", json=body).json()["spec"]
    assert spec["student"] == {"arch": "mlp", "width": 1.0, "width_reason": WIDTH_GIVEN}
    assert spec["synthesis"]["steps"] == 7 and spec["synthesis"]["batch_size"] == 30
    assert spec["training"]["epochs"] == 2 and spec["training"]["lr"] == 1.0
    assert spec["seed"] == 42


def test_input_range_is_kept_and_checked(client: TestClient, digits_id: str) -> None:
    """Every engine field of the body reaches the stored spec (input_range once was dropped)."""
    created = client.post("/v1/jobs", json={"teacher_id": digits_id, "input_range": [-1, 1]})
    assert created.status_code == 202, created.text
    assert created.json()["spec"]["input_range"] == [-1.0, 1.0]
    default = client.post("/v1/jobs", json={"teacher_id": digits_id}).json()["spec"]
    assert default["input_range"] is None
    for bad, words in (([1, -1], "low < high"), ([0], "at least 2"), ([0, 1, 2], "at most 2")):
        r = client.post("/v1/jobs", json={"teacher_id": digits_id, "input_range": bad})
        assert r.status_code == 422, r.text
        [error] = r.json()["errors"]
        assert error["loc"] == ["body", "input_range"] and words in error["msg"], error


def test_a_jobs_spec_can_be_sent_again_and_width_reason_is_output_only(
    client: TestClient, wine_id: str
) -> None:
    first = client.post("/v1/jobs", json={"teacher_id": wine_id}).json()["spec"]
    assert first["student"] == {"arch": "mlp", "width": None, "width_reason": WIDTH_PENDING}
    # A succeeded job's spec holds the chosen width and why; sent again, that width is explicit.
    chosen = {"arch": "mlp", "width": 0.15625, "width_reason": "no width given: 0.15625 is ..."}
    again = client.post(
        "/v1/jobs", json={"teacher_id": wine_id, **{**first, "student": chosen}}
    ).json()["spec"]
    assert again["student"] == {"arch": "mlp", "width": 0.15625, "width_reason": WIDTH_GIVEN}
    r = client.post("/v1/jobs", json={"teacher_id": wine_id, "student": {"width_reason": 5}})
    assert r.status_code == 422
    assert ["body", "student", "width_reason"] in [e["loc"] for e in r.json()["errors"]]


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"colour": "red"}, ["body", "colour"]),
        ({"synthesis": {"stepz": 5}}, ["body", "synthesis", "stepz"]),
        ({"synthesis": {"weights": {"foo": 1}}}, ["body", "synthesis", "weights", "foo"]),
        ({"synthesis": {"steps": "many"}}, ["body", "synthesis", "steps"]),
        ({"synthesis": {"steps": 0}}, ["body", "synthesis", "steps"]),
        ({"student": {"width": 100}}, ["body", "student", "width"]),
        ({"training": {"optimizer": "lbfgs"}}, ["body", "training", "optimizer"]),
        ({"synthesis": {"groups": 5}}, ["body", "synthesis", "groups"]),
        ({"synthesis": {"groups": 3, "batch_size": 100}}, ["body", "synthesis", "batch_size"]),
        ({"preset": "turbo"}, ["body", "preset"]),
        ({"student": {"arch": "lenet5"}}, ["body", "student", "arch"]),
        ({"student": {"arch": "transformer9000"}}, ["body", "student", "arch"]),
        ({"metadata": {"blob": "x" * 20000}}, ["body", "metadata"]),
    ],
)
def test_invalid_specs_name_the_field(
    client: TestClient, wine_id: str, patch: dict[str, Any], loc: list[str], fake_queue: FakeQueue
) -> None:
    body = assert_problem(
        client.post("/v1/jobs", json={"teacher_id": wine_id, **patch}), 422, "validation_error"
    )
    assert body["errors"][0]["loc"] == loc, body
    assert body["errors"][0]["msg"]
    assert fake_queue.sent == []


def test_groups_above_class_count_says_why(client: TestClient, wine_id: str) -> None:
    r = client.post("/v1/jobs", json={"teacher_id": wine_id, "synthesis": {"groups": 10}})
    body = assert_problem(r, 422, "validation_error")
    assert "synthesis.groups" in body["detail"] and "(3)" in body["detail"]


def test_teacher_id_is_required_and_must_exist(client: TestClient) -> None:
    body = assert_problem(client.post("/v1/jobs", json={}), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "teacher_id"]
    body = assert_problem(client.post("/v1/jobs", json={"teacher_id": "tch_x"}), 404, "not_found")
    assert body["errors"][0]["loc"] == ["body", "teacher_id"]
    assert_problem(client.post("/v1/jobs", content=b"{not json"), 422, "validation_error")


def test_eval_dataset_must_fit_the_teacher(
    client: TestClient, digits_id: str, wine: BundledTeacher, digits: BundledTeacher
) -> None:
    with open(wine.eval_path, "rb") as fh:
        wine_ds = client.post("/v1/datasets", files={"file": fh}).json()
    with open(digits.eval_path, "rb") as fh:
        digits_ds = client.post("/v1/datasets", files={"file": fh}).json()
    body = {"teacher_id": digits_id, "eval_dataset_id": wine_ds["id"]}
    problem = assert_problem(client.post("/v1/jobs", json=body), 422, "dataset_invalid")
    assert "[13]" in problem["detail"] and "[1, 8, 8]" in problem["detail"]
    body["eval_dataset_id"] = "ds_missing"
    assert_problem(client.post("/v1/jobs", json=body), 404, "not_found")
    body["eval_dataset_id"] = digits_ds["id"]
    job = client.post("/v1/jobs", json=body).json()
    assert job["eval_dataset_id"] == digits_ds["id"]


def test_eval_dataset_classes_must_exist_in_the_teacher(
    client: TestClient, wine_id: str, tmp_path: Any
) -> None:
    import numpy as np

    path = tmp_path / "five.npz"
    np.savez(path, x=np.zeros((5, 13), np.float32), y=np.arange(5))
    with open(path, "rb") as fh:
        ds = client.post("/v1/datasets", files={"file": fh}).json()
    r = client.post("/v1/jobs", json={"teacher_id": wine_id, "eval_dataset_id": ds["id"]})
    assert "3 classes" in assert_problem(r, 422, "dataset_invalid")["detail"]


def test_one_shot_creates_teacher_and_job(
    client: TestClient, wine: BundledTeacher, fake_queue: FakeQueue
) -> None:
    spec = {"preset": "fast", "training": {"epochs": 3}, "metadata": {"via": "one-shot"}}
    with open(wine.path, "rb") as fh:
        r = client.post(
            "/v1/jobs",
            files={"teacher": ("wine.pt", fh)},
            data={"input_shape": "[13]", "spec": json.dumps(spec), "name": "wine"},
        )
    assert r.status_code == 202, r.text
    job = r.json()
    teacher = client.get(f"/v1/teachers/{job['teacher_id']}").json()
    assert teacher["name"] == "wine" and teacher["num_classes"] == 3
    assert job["spec"]["training"]["epochs"] == 3
    assert job["spec"]["synthesis"]["steps"] == PRESETS["fast"]["synthesis"]["steps"]
    assert job["metadata"] == {"via": "one-shot"}
    assert fake_queue.sent == [(job["id"], "cpu")]


def test_one_shot_with_a_bad_spec_creates_nothing(client: TestClient, wine: BundledTeacher) -> None:
    for spec, loc in [
        ({"synthesis": {"groups": 5}}, ["body", "spec", "synthesis", "groups"]),
        ({"training": {"epochz": 1}}, ["body", "spec", "training", "epochz"]),
        ({"teacher_id": "tch_x"}, ["body", "spec", "teacher_id"]),
    ]:
        with open(wine.path, "rb") as fh:
            r = client.post(
                "/v1/jobs",
                files={"teacher": fh},
                data={"input_shape": "[13]", "spec": json.dumps(spec)},
            )
        assert assert_problem(r, 422, "validation_error")["errors"][0]["loc"] == loc
    assert client.get("/v1/teachers").json()["data"] == []
    assert client.get("/v1/jobs").json()["data"] == []


def test_idempotency_key_replays_or_conflicts(
    client: TestClient, wine_id: str, fake_queue: FakeQueue
) -> None:
    key = {"Idempotency-Key": "nightly-2024-01-01"}
    body = {"teacher_id": wine_id, "seed": 1, "metadata": {"a": 1, "b": 2}}
    first = client.post("/v1/jobs", json=body, headers=key)
    # The same content with other key order and whitespace is the same request.
    same = json.dumps({"metadata": {"b": 2, "a": 1}, "seed": 1, "teacher_id": wine_id}, indent=2)
    again = client.post(
        "/v1/jobs", content=same, headers={**key, "Content-Type": "application/json"}
    )
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert len(fake_queue.sent) == 1
    assert len(client.get("/v1/jobs").json()["data"]) == 1
    other = client.post("/v1/jobs", json={**body, "seed": 2}, headers=key)
    assert "different request" in assert_problem(other, 409, "conflict")["detail"]
    assert client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k2"}).status_code == 202


def test_a_broker_outage_still_accepts_the_job(
    client: TestClient, wine_id: str, fake_queue: FakeQueue
) -> None:
    """The database is the source of truth; the workers' sweeper publishes the job later."""
    fake_queue.fail = True
    r = client.post("/v1/jobs", json={"teacher_id": wine_id})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    events = client.get(f"/v1/jobs/{r.json()['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["queued", "enqueue_delayed"]
    assert events[-1]["level"] == "warning"


def _set(client: TestClient, job_id: str, **values: Any) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        job = session.get(Job, job_id)
        for key, value in values.items():
            setattr(job, key, value)
        session.commit()


def test_list_filters_by_status_and_paginates(client: TestClient, wine_id: str) -> None:
    ids = [client.post("/v1/jobs", json={"teacher_id": wine_id}).json()["id"] for _ in range(3)]
    _set(client, ids[1], status="running", phase="training")
    running = client.get("/v1/jobs", params={"status": "running"}).json()
    assert [j["id"] for j in running["data"]] == [ids[1]]
    queued = client.get("/v1/jobs", params={"status": "queued", "limit": 1}).json()
    assert [j["id"] for j in queued["data"]] == [ids[2]] and queued["has_more"]
    rest = client.get(
        "/v1/jobs", params={"status": "queued", "limit": 1, "after": queued["next_after"]}
    ).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    by_teacher = client.get("/v1/jobs", params={"teacher_id": wine_id}).json()
    assert len(by_teacher["data"]) == 3
    assert_problem(client.get("/v1/jobs", params={"status": "done"}), 422, "validation_error")
    assert_problem(client.get("/v1/jobs/job_nope"), 404, "not_found")


def test_cancel_queued_running_and_finished(client: TestClient, wine_id: str) -> None:
    queued = client.post("/v1/jobs", json={"teacher_id": wine_id}).json()
    canceled = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert canceled.json()["finished_at"] is not None
    events = client.get(f"/v1/jobs/{queued['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["queued", "canceled"]

    running = client.post("/v1/jobs", json={"teacher_id": wine_id}).json()
    _set(client, running["id"], status="running", phase="synthesizing")
    r = client.post(f"/v1/jobs/{running['id']}/cancel").json()
    assert r["status"] == "running" and r["cancel_requested"] is True
    events = client.get(f"/v1/jobs/{running['id']}/events").json()["data"]
    assert events[-1]["type"] == "cancel_requested"

    done = client.post("/v1/jobs", json={"teacher_id": wine_id}).json()
    _set(client, done["id"], status="succeeded", phase="exporting", progress=1.0)
    before = client.get(f"/v1/jobs/{done['id']}").json()
    assert client.post(f"/v1/jobs/{done['id']}/cancel").json() == before
    assert_problem(client.post("/v1/jobs/job_nope/cancel"), 404, "not_found")


def test_delete_job_only_when_finished(client: TestClient, wine_id: str) -> None:
    job = client.post("/v1/jobs", json={"teacher_id": wine_id}).json()
    assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 409, "conflict")
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert_problem(client.get(f"/v1/jobs/{job['id']}"), 404, "not_found")


def test_input_models_cover_the_engine_spec() -> None:
    """Every engine field is accepted (and documented) by the API's input models."""
    pairs = [
        (StudentIn, StudentSpec),
        (SynthesisIn, SynthesisSpec),
        (TrainingIn, TrainingSpec),
        (LossWeightsIn, LossWeights),
    ]
    for model, dataclass_ in pairs:
        assert set(model.model_fields) == set(dataclass_.__dataclass_fields__), model
    assert {"student", "synthesis", "training", "preset", "seed"} <= set(JobSpecIn.model_fields)


def test_an_oversized_json_body_is_413(client: TestClient) -> None:
    big = json.dumps({"teacher_id": "tch_x", "metadata": {"x": "y" * (2 << 20)}})
    r = client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert_problem(r, 413, "payload_too_large")
