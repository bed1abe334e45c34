"""Operations endpoints, the catalogue, the OpenAPI document and error hygiene."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

from api_support import ROOT, BundledTeacher, FakeQueue, TestClient, assert_problem, upload_teacher

from cake_shared.models import Job, utcnow

API_MD = ROOT.parent / "shared" / "docs" / "API.md"
API_PATHS = {
    ("post", "/v1/teachers"),
    ("get", "/v1/teachers"),
    ("get", "/v1/teachers/{id}"),
    ("delete", "/v1/teachers/{id}"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("get", "/v1/jobs/{id}/events"),
    ("get", "/v1/jobs/{id}/artifacts"),
    ("get", "/v1/jobs/{id}/artifacts/{name}"),
    ("get", "/v1/jobs/{id}/student"),
    ("post", "/v1/datasets"),
    ("get", "/v1/architectures"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}


def test_the_api_process_does_not_import_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import api.main, sys; print('torch' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_healthz_and_readyz(client: TestClient, fake_queue: FakeQueue) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"database": "ok", "store": "ok", "broker": "ok"}
    # The API is ready without workers; it says which queue misses one.
    assert body["workers"]["live"] == {"cpu": 0, "gpu": 0}
    assert body["workers"]["missing"] == ["cpu"]
    fake_queue.broker_up = False
    body = assert_problem(client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["broker"].startswith("unavailable")
    assert body["checks"]["database"] == "ok"


def test_readyz_without_a_queue_module_is_not_ready(
    client: TestClient, fake_queue: FakeQueue
) -> None:
    fake_queue.loadable = False  # the broker's client library cannot be imported
    body = assert_problem(client.get("/readyz"), 503, "not_ready")
    assert "broker" in body["detail"]


def test_architectures(client: TestClient) -> None:
    body = client.get("/v1/architectures").json()
    archs = {a["name"]: a for a in body["data"]}
    assert {"mlp", "lenet5", "resnet18", "vit"} <= set(archs)
    assert archs["lenet5"]["input_ranks"] == [3] and archs["lenet5"]["default_for_ranks"] == [3]
    assert 1 in archs["mlp"]["default_for_ranks"]
    for arch in archs.values():
        assert arch["description"] and arch["width"]["min"] > 0
        # No fixed default width: each job's is chosen from its teacher's size.
        assert arch["width"] == {"default": None, "min": 0.0625, "max": 8.0}
        assert arch["parameters"] and all(p["parameters"] > 0 for p in arch["parameters"])
    half, full = (
        next(p["parameters"] for p in archs["lenet5"]["parameters"] if p["width"] == w)
        for w in (0.5, 1.0)
    )
    assert half < full


def test_metrics(client: TestClient, wine: BundledTeacher) -> None:
    teacher = upload_teacher(client, wine.path, [13]).json()
    client.get(f"/v1/teachers/{teacher['id']}")
    client.get("/v1/teachers/tch_nope")
    jobs = [client.post("/v1/jobs", json={"teacher_id": teacher["id"]}).json() for _ in range(2)]
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        job = session.get(Job, jobs[0]["id"])
        job.status, job.started_at, job.finished_at = "succeeded", utcnow(), utcnow()
        job.metrics = {"synthesis_seconds": 3.0, "training_seconds": 4.0}
        session.commit()
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        'cake_http_requests_total{method="GET",route="/v1/teachers/{id}",status="200"} 1.0' in text
    )
    assert 'route="/v1/teachers/{id}",status="404"} 1.0' in text
    assert 'cake_http_request_duration_seconds_count{method="POST",route="/v1/jobs"} 2.0' in text
    assert 'cake_jobs{status="queued"} 1.0' in text
    assert 'cake_jobs{status="succeeded"} 1.0' in text
    assert 'cake_queue_depth{queue="cpu"} 1.0' in text
    assert 'cake_job_phase_duration_seconds_sum{phase="synthesizing"} 3.0' in text
    assert 'cake_job_phase_duration_seconds_count{phase="training"} 1.0' in text
    again = client.get("/metrics").text  # a finished job is counted once
    assert 'cake_job_phase_duration_seconds_count{phase="training"} 1.0' in again


def test_openapi_documents_every_path_and_field(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert documented >= API_PATHS
    if API_MD.exists():  # every endpoint API.md names is in the document
        named = re.findall(r"`(GET|POST|DELETE) (/[^`?\s]+)", API_MD.read_text())
        assert len(named) >= 10
        for method, path in named:
            path = re.sub(r"\{[^}]+\}", "{id}", path).replace(
                "{id}/artifacts/{id}", "{id}/artifacts/{name}"
            )
            assert (method.lower(), path) in documented, (method, path)
    schemas = spec["components"]["schemas"]
    for name in (
        "JobCreate",
        "StudentIn",
        "SynthesisIn",
        "TrainingIn",
        "LossWeightsIn",
        "OneShotJobForm",
        "TeacherUploadForm",
        "DatasetUploadForm",
        "Teacher",
        "Job",
        "Dataset",
        "Event",
        "Artifact",
        "Architecture",
        "Problem",
    ):
        for field, prop in schemas[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} is not described"
    groups = schemas["SynthesisIn"]["properties"]["groups"]
    assert "Range 1..1000" in groups["description"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(spec)))
    assert refs and refs <= set(schemas), "every $ref resolves"
    post_jobs = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(post_jobs)


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing"), 404, "not_found")
    assert_problem(client.put("/v1/teachers"), 405, "method_not_allowed")


def test_internal_errors_leak_nothing(make_client: Any, wine: BundledTeacher) -> None:
    client = make_client()
    store = client.app.state.ctx.store  # type: ignore[attr-defined]

    def broken(key: str) -> bool:
        raise OSError(f"disk on fire at {store.root}/{key}")

    store.exists = broken
    body = assert_problem(upload_teacher(client, wine.path, [13]), 500, "internal")
    assert "fire" not in body["detail"]
