"""Webhooks in the API: ``callback_url`` on jobs (validation, echo, scheduling on cancel), the
tenant's signing secret (get, rotate), the refusal of internal addresses, and OpenAPI."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from api_support import BundledTeacher, TestClient, assert_problem, upload_teacher

from cake_shared.settings import Settings
from cake_shared.webhooks import check_callback_url, validate_callback_url

WAITING = {"status": "waiting", "attempts": 0, "next_attempt_at": None}


@pytest.fixture
def wine_id(client: TestClient, wine: BundledTeacher) -> str:
    return upload_teacher(client, wine.path, [13]).json()["id"]


def test_callback_url_is_echoed_and_scheduled_when_the_job_ends(
    client: TestClient, wine_id: str
) -> None:
    url = "https://ci.example.com/hooks/cake?run=7"
    r = client.post("/v1/jobs", json={"teacher_id": wine_id, "callback_url": url})
    assert r.status_code == 202, r.text
    job = r.json()
    assert (job["callback_url"], job["webhook"]) == (url, WAITING)
    assert "callback_url" not in job["spec"]
    assert client.get(f"/v1/jobs/{job['id']}").json() == job

    plain = client.post("/v1/jobs", json={"teacher_id": wine_id}).json()
    assert (plain["callback_url"], plain["webhook"]) == (None, None)

    # Canceling the queued job ends it: its callback is due at once, in the same transaction.
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    assert canceled["webhook"]["status"] == "pending" and canceled["webhook"]["attempts"] == 0
    assert canceled["webhook"]["next_attempt_at"] is not None
    plain = client.post(f"/v1/jobs/{plain['id']}/cancel").json()
    assert plain["status"] == "canceled" and plain["webhook"] is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("/relative/hook", "http:// or https://"),
        ("https://user:secret@example.com/hook", "credentials"),
        ("https://example.com/hook#frag", "fragment"),
        ("https:///nohost", "host"),
        ("https://example.com:99999/hook", "valid URL"),
        ("https://example.com/a b", "spaces"),
        ("https://example.com/" + "a" * 2048, "2048"),
        (123, "string"),
    ],
)
def test_bad_callback_urls_are_422_naming_the_field(
    client: TestClient, wine_id: str, value: object, words: str
) -> None:
    r = client.post("/v1/jobs", json={"teacher_id": wine_id, "callback_url": value})
    body = assert_problem(r, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "callback_url"]
    assert words in body["errors"][0]["msg"], body
    assert client.get("/v1/jobs").json()["data"] == []


def test_one_shot_form_takes_callback_url_in_its_spec(
    client: TestClient, wine: BundledTeacher
) -> None:
    def one_shot(spec: dict) -> object:
        with open(wine.path, "rb") as fh:
            return client.post(
                "/v1/jobs",
                files={"teacher": ("wine.pt", fh)},
                data={"input_shape": "[13]", "spec": json.dumps(spec)},
            )

    r = one_shot({"preset": "fast", "callback_url": "mailto:me@example.com"})
    loc = assert_problem(r, 422, "validation_error")["errors"][0]["loc"]
    assert loc == ["body", "spec", "callback_url"]
    r = one_shot({"preset": "fast", "callback_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 202, r.text
    assert r.json()["callback_url"] == "http://127.0.0.1:9/hook"
    assert r.json()["webhook"] == WAITING


INTERNAL = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://100.64.0.1/hook",
    "http://0.0.0.0/hook",
]


def test_internal_addresses_are_refused_when_the_deployment_says_so(
    make_client: Callable[..., TestClient], wine: BundledTeacher
) -> None:
    client = make_client(webhook_allow_private=False)
    teacher_id = upload_teacher(client, wine.path, [13]).json()["id"]
    for url in INTERNAL:
        r = client.post("/v1/jobs", json={"teacher_id": teacher_id, "callback_url": url})
        body = assert_problem(r, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["body", "callback_url"], url
        assert "not a public address" in body["errors"][0]["msg"], url
    assert client.get("/v1/jobs").json()["data"] == []
    # A public address passes (an IP literal: no DNS needed on the test machine).
    public = "https://93.184.216.34/hook"
    r = client.post("/v1/jobs", json={"teacher_id": teacher_id, "callback_url": public})
    assert r.status_code == 202, r.text


def test_callback_url_checks_without_http() -> None:
    assert validate_callback_url("http://127.0.0.1:5000/x?y=1") == "http://127.0.0.1:5000/x?y=1"
    allowed, strict = Settings(webhook_allow_private=True), Settings(webhook_allow_private=False)
    assert check_callback_url("http://127.0.0.1/x", allowed) == "http://127.0.0.1/x"
    with pytest.raises(ValueError, match="not a public address"):
        check_callback_url("http://127.0.0.1/x", strict)
    with pytest.raises(ValueError, match="does not resolve"):
        check_callback_url("http://no-such-host.invalid/x", strict)


def test_webhook_secret_is_stable_until_rotated(client: TestClient) -> None:
    first = client.get("/v1/webhooks/secret")
    assert first.status_code == 200, first.text
    info = first.json()
    assert info["secret"].startswith("whsec_") and len(info["secret"]) > 30
    assert (info["signature_header"], info["algorithm"]) == ("Cake-Signature", "hmac-sha256")
    assert client.get("/v1/webhooks/secret").json() == info

    assert info["previous_secret_expires_at"] is None  # never rotated: one secret signs

    rotated = client.post("/v1/webhooks/secret/rotate")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] != info["secret"]
    assert client.get("/v1/webhooks/secret").json()["secret"] == rotated.json()["secret"]


def test_rotation_keeps_the_previous_secret_for_the_grace_period(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(webhook_secret_grace_s=3600)
    before = datetime.now(UTC)
    rotated = client.post("/v1/webhooks/secret/rotate").json()
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert before + timedelta(seconds=3600) <= until <= datetime.now(UTC) + timedelta(hours=1)
    assert client.get("/v1/webhooks/secret").json() == rotated

    # No grace: the previous secret stops signing at once and no expiry is shown.
    client = make_client(webhook_secret_grace_s=0)
    rotated = client.post("/v1/webhooks/secret/rotate").json()
    assert rotated["previous_secret_expires_at"] is None
    assert client.get("/v1/webhooks/secret").json() == rotated


def test_openapi_documents_callbacks_and_the_secret(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"callback_url", "webhook"} <= set(schemas["Job"]["properties"])
    assert "callback_url" in schemas["JobCreate"]["properties"]
    assert set(schemas["JobWebhook"]["properties"]) == {"status", "attempts", "next_attempt_at"}
    assert "get" in spec["paths"]["/v1/webhooks/secret"]
    assert "post" in spec["paths"]["/v1/webhooks/secret/rotate"]
    secret = schemas["WebhookSecret"]["properties"]
    assert {"secret", "signature_header", "algorithm", "previous_secret_expires_at"} <= set(secret)
