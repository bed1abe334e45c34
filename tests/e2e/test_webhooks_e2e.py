"""Job webhooks end to end: a real ``cake serve`` (API, SQLite, filesystem broker and its Celery
worker child) calls back a real HTTP receiver on loopback, through plain HTTP only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from e2e_support import (
    ROOT,
    CakeProcess,
    all_events,
    expect,
    free_port,
    poll_job,
    service_env,
)
from webhook_receiver_support import Received, WebhookReceiver, webhook_receiver

from cake_client.webhooks import verify_signature

READY_TIMEOUT_S = 120
JOB_TIMEOUT_S = 120
TINY = {"synthesis": {"num_samples": 300, "steps": 10}, "training": {"epochs": 2}}
#: Runs for many minutes: only ever created to be canceled.
BIG = {"synthesis": {"num_samples": 200000, "steps": 500}, "training": {"epochs": 200}}


class Service:
    def __init__(self, url: str, client: httpx.Client, process: CakeProcess) -> None:
        self.url, self.client, self.process = url, client, process
        self.teacher_id = ""

    def create(self, spec: dict[str, Any], callback_url: str) -> dict[str, Any]:
        body = {"teacher_id": self.teacher_id, "callback_url": callback_url, **spec}
        return expect(self.client.post("/v1/jobs", json=body), 202)

    def job(self, job_id: str) -> dict[str, Any]:
        return expect(self.client.get(f"/v1/jobs/{job_id}"), 200)

    def settled(self, job_id: str, status: str, receiver: WebhookReceiver) -> dict[str, Any]:
        """The job once its delivery is ``status`` (fails with the service log otherwise)."""
        try:
            return poll_job(
                self.client,
                job_id,
                lambda job: (job.get("webhook") or {}).get("status") == status,
                JOB_TIMEOUT_S,
                f"webhook {status}",
                check=self.process.check_running,
            )
        except AssertionError as exc:
            log = "\n".join(
                line for line in self.process.log(200_000).splitlines() if '"GET /v1/' not in line
            )
            raise AssertionError(f"{exc}\n{receiver.received}\n{log[-8000:]}") from None


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as server:
        yield server


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("webhooks-e2e")
    port = free_port()
    env = service_env(
        CAKE_WEBHOOK_BACKOFF_S="0.2", CAKE_WEBHOOK_POLL_S="0.1", CAKE_WEBHOOK_TIMEOUT_S="5"
    )
    process = CakeProcess(
        ["serve", "--port", str(port), "--data-dir", str(root / "data")],
        env,
        root / "serve.log",
        cwd=root,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        process.wait_http(f"http://127.0.0.1:{port}/readyz", READY_TIMEOUT_S)
        service = Service(f"http://127.0.0.1:{port}", client, process)
        with open(ROOT / "examples" / "wine_mlp.pt", "rb") as fh:
            teacher = client.post(
                "/v1/teachers", files={"file": ("wine.pt", fh)}, data={"input_shape": "[13]"}
            )
        service.teacher_id = expect(teacher, 201)["id"]
        yield service
    finally:
        client.close()
        process.stop()


def _verified(request: Received, secret: str, event: str) -> dict[str, Any]:
    assert request.headers["cake-event"] == event
    assert request.headers["content-type"] == "application/json"
    assert verify_signature(secret, request.headers["cake-signature"], request.body), request
    return json.loads(request.body)


def test_finished_job_is_posted_as_get_returns_it_signed_with_the_tenant_secret(
    service: Service, receiver: WebhookReceiver
) -> None:
    url = receiver.url("/e2e/succeeded")
    job = service.create(TINY, url)
    assert job["webhook"] == {"status": "waiting", "attempts": 0, "next_attempt_at": None}
    final = service.settled(job["id"], "delivered", receiver)
    (request,) = receiver.at("/e2e/succeeded")

    secret = expect(service.client.get("/v1/webhooks/secret"), 200)["secret"]
    body = _verified(request, secret, "job.succeeded")
    assert not verify_signature("whsec_wrong", request.headers["cake-signature"], request.body)
    # The job exactly as GET returns it; only the delivery state moved on since the POST.
    assert body["webhook"]["status"] == "pending" and body["webhook"]["attempts"] == 1
    assert final["webhook"] == {"status": "delivered", "attempts": 1, "next_attempt_at": None}
    assert {**body, "webhook": None} == {**final, "webhook": None}
    assert body["status"] == "succeeded" and body["callback_url"] == url

    attempts = [e for e in all_events(service.client, job["id"]) if e["type"] == "webhook_attempt"]
    assert len(attempts) == 1 and attempts[0]["data"]["status_code"] == 200
    assert attempts[0]["data"]["delivery_id"] == request.headers["cake-delivery"]


def test_receiver_failing_twice_gets_three_attempts_signed_with_the_rotated_secret(
    service: Service, receiver: WebhookReceiver
) -> None:
    old = expect(service.client.get("/v1/webhooks/secret"), 200)["secret"]
    rotated = expect(service.client.post("/v1/webhooks/secret/rotate"), 200)
    new = rotated["secret"]
    assert new != old and rotated["previous_secret_expires_at"] is not None
    job = service.create(TINY, receiver.script("/e2e/flaky", [500, 502], then=204))
    service.settled(job["id"], "delivered", receiver)

    requests = receiver.at("/e2e/flaky")
    assert len(requests) == 3
    for request in requests:
        _verified(request, new, "job.succeeded")
        # within the grace period (24 h by default) the replaced secret signs too
        header = request.headers["cake-signature"]
        assert header.count("v1=") == 2
        assert verify_signature(old, header, request.body)
        assert not verify_signature("whsec_other", header, request.body)
    assert len({r.headers["cake-delivery"] for r in requests}) == 1
    events = all_events(service.client, job["id"])
    attempts = [e for e in events if e["type"] == "webhook_attempt"]
    assert [e["data"]["status_code"] for e in attempts] == [500, 502, 204]
    assert [e["data"]["outcome"] for e in attempts] == ["retry", "retry", "delivered"]
    assert [e["level"] for e in attempts] == ["warning", "warning", "info"]
    assert service.job(job["id"])["webhook"]["attempts"] == 3


def test_canceled_jobs_call_back_queued_or_running(
    service: Service, receiver: WebhookReceiver
) -> None:
    running = service.create(BIG, receiver.url("/e2e/running"))
    poll_job(
        service.client,
        running["id"],
        lambda job: job["status"] == "running",
        JOB_TIMEOUT_S,
        "to start",
        check=service.process.check_running,
    )
    # The only worker is busy: this one stays queued until it is canceled.
    queued = service.create(TINY, receiver.url("/e2e/queued"))
    canceled = expect(service.client.post(f"/v1/jobs/{queued['id']}/cancel"), 200)
    assert canceled["status"] == "canceled" and canceled["webhook"]["status"] == "pending"
    expect(service.client.post(f"/v1/jobs/{running['id']}/cancel"), 200)

    secret = expect(service.client.get("/v1/webhooks/secret"), 200)["secret"]
    for job, path in ((queued, "/e2e/queued"), (running, "/e2e/running")):
        service.settled(job["id"], "delivered", receiver)
        (request,) = receiver.at(path)
        body = _verified(request, secret, "job.canceled")
        assert (body["id"], body["status"]) == (job["id"], "canceled")


def test_bad_callback_url_is_refused_before_anything_is_created(service: Service) -> None:
    body = {"teacher_id": service.teacher_id, "callback_url": "http://user:pw@example.com/"}
    r = service.client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "callback_url"]
