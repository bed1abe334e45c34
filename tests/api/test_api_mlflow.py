"""A job spec's ``mlflow_tracking_uri`` at the API: who may name one (``CAKE_MLFLOW_SPEC_TENANTS``),
which URLs (http/https only), the 422s otherwise, and its echo in the job's spec."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from api_support import BundledTeacher, TestClient, assert_problem, upload_teacher

from cake_shared import tenants
from cake_shared.models import Job

URI = "http://127.0.0.1:5000"


def _key(client: TestClient, tenant: str) -> dict[str, str]:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        secret = tenants.create_key(session, tenant).secret
    return {"Authorization": f"Bearer {secret}"}


def _jobs(client: TestClient) -> int:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        return session.query(Job).count()


def _error_loc(response: object) -> list[str]:
    body = assert_problem(response, 422, "validation_error")
    (error,) = body["errors"]
    return list(error["loc"])


def test_a_tenant_not_allowed_is_refused_with_a_422(
    client: TestClient, wine: BundledTeacher
) -> None:
    """The default: no tenant may name its own tracking server; nothing is written."""
    teacher_id = upload_teacher(client, wine.path, [13]).json()["id"]
    r = client.post("/v1/jobs", json={"teacher_id": teacher_id, "mlflow_tracking_uri": URI})
    assert _error_loc(r) == ["body", "mlflow_tracking_uri"]
    assert "CAKE_MLFLOW_SPEC_TENANTS" in r.json()["detail"]
    assert "'local'" in r.json()["detail"]
    assert _jobs(client) == 0


def test_listed_tenants_may_and_others_may_not(
    make_client: Callable[..., TestClient], wine: BundledTeacher
) -> None:
    client = make_client(mlflow_spec_tenants="acme, beta", auth_cache_s=0.0)
    acme, other = _key(client, "acme"), _key(client, "other")
    acme_teacher = upload_teacher(client, wine.path, [13], headers=acme).json()["id"]
    other_teacher = upload_teacher(client, wine.path, [13], headers=other).json()["id"]

    body = {"teacher_id": acme_teacher, "mlflow_tracking_uri": URI, "metadata": {"name": "w"}}
    created = client.post("/v1/jobs", json=body, headers=acme)
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["spec"]["mlflow_tracking_uri"] == URI
    assert client.get(f"/v1/jobs/{job['id']}", headers=acme).json()["spec"] == job["spec"]

    refused = client.post(
        "/v1/jobs",
        json={"teacher_id": other_teacher, "mlflow_tracking_uri": URI},
        headers=other,
    )
    assert _error_loc(refused) == ["body", "mlflow_tracking_uri"]
    assert "'other'" in refused.json()["detail"]
    # Without the field, nothing changes for anyone.
    plain = client.post("/v1/jobs", json={"teacher_id": other_teacher}, headers=other)
    assert plain.status_code == 202 and "mlflow_tracking_uri" not in plain.json()["spec"]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("file:///var/lib/mlruns", "http:// or https://"),
        ("sqlite:///tmp/mlflow.db", "http:// or https://"),
        ("/tmp/mlruns", "http:// or https://"),
        ("databricks", "http:// or https://"),
        ("https://user:secret@mlflow.example.com", "credentials"),
        ("https://mlflow.example.com/#x", "fragment"),
        ("https://mlflow.example.com/" + "a" * 2048, "2048"),
        (5000, "string"),
    ],
)
def test_only_http_urls_even_for_allowed_tenants(
    make_client: Callable[..., TestClient], wine: BundledTeacher, value: object, words: str
) -> None:
    client = make_client(mlflow_spec_tenants="*")
    teacher_id = upload_teacher(client, wine.path, [13]).json()["id"]
    r = client.post("/v1/jobs", json={"teacher_id": teacher_id, "mlflow_tracking_uri": value})
    assert _error_loc(r) == ["body", "mlflow_tracking_uri"]
    assert words in r.text
    assert _jobs(client) == 0


def test_internal_addresses_are_refused_where_webhooks_to_them_are(
    make_client: Callable[..., TestClient], wine: BundledTeacher
) -> None:
    client = make_client(mlflow_spec_tenants="*", webhook_allow_private=False)
    teacher_id = upload_teacher(client, wine.path, [13]).json()["id"]
    r = client.post("/v1/jobs", json={"teacher_id": teacher_id, "mlflow_tracking_uri": URI})
    assert _error_loc(r) == ["body", "mlflow_tracking_uri"]
    assert "not a public address" in r.json()["detail"]


def test_the_one_shot_form_follows_the_same_rule(
    make_client: Callable[..., TestClient], wine: BundledTeacher
) -> None:
    def submit(client: TestClient) -> object:
        with open(wine.path, "rb") as fh:
            return client.post(
                "/v1/jobs",
                files={"teacher": ("wine.pt", fh)},
                data={"input_shape": "[13]", "spec": json.dumps({"mlflow_tracking_uri": URI})},
            )

    refused = submit(make_client())
    assert _error_loc(refused) == ["body", "spec", "mlflow_tracking_uri"]
    created = submit(make_client(mlflow_spec_tenants="local"))
    assert created.status_code == 202, created.text  # type: ignore[attr-defined]
    assert created.json()["spec"]["mlflow_tracking_uri"] == URI  # type: ignore[attr-defined]


def test_the_field_is_documented(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    field = schema["JobCreate"]["properties"]["mlflow_tracking_uri"]
    assert "CAKE_MLFLOW_SPEC_TENANTS" in field["description"]
    assert field["anyOf"][0] == {"type": "string", "maxLength": 2048}
