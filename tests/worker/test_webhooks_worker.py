"""Job webhooks in the worker: real jobs end through the runner (or cancel, or the sweeper), the
real deliverer thread POSTs them to a real HTTP server on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from webhook_receiver_support import Received, WebhookReceiver, webhook_receiver
from worker_support import TINY_SPEC, Service, wait_for

from cake_client.webhooks import parse_signature, sign, verify_signature
from cake_shared import jobs, webhooks
from cake_shared.job_view import job_json
from cake_shared.models import LOCAL_TENANT, Job, Tenant, utcnow
from cake_shared.tenants import get_or_create_tenant
from worker.runner import process_job
from worker.webhooks import WebhookDeliverer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Small backoff so retries take fractions of a second.
FAST = {
    "CAKE_WEBHOOK_BACKOFF_S": "0.1",
    "CAKE_WEBHOOK_TIMEOUT_S": "5",
    "CAKE_WEBHOOK_POLL_S": "0.05",
}


@dataclass(frozen=True)
class Wine:
    """The bundled wine teacher (no training in the test): what ``Service.add_job`` reads."""

    path: Path = EXAMPLES / "wine_mlp.pt"
    input_shape: tuple[int, ...] = (13,)
    num_classes: int = 3


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as server:
        yield server


@pytest.fixture
def deliverer() -> Iterator[Callable[[Service], WebhookDeliverer]]:
    """Start the worker's deliverer thread on a service's settings and database."""
    started: list[WebhookDeliverer] = []

    def start(service: Service) -> WebhookDeliverer:
        started.append(WebhookDeliverer(service.ctx))
        started[-1].start()
        return started[-1]

    yield start
    for item in started:
        item.stop()


def _with_callback(service: Service, job_id: str, url: str) -> None:
    with service.ctx.session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(callback_url=url))


def _secret(service: Service) -> str:
    with service.ctx.session_scope() as session:
        return get_or_create_tenant(session, LOCAL_TENANT).webhook_secret


def _webhook_events(service: Service, job_id: str) -> list:
    return [e for e in service.events(job_id) if e.type.startswith("webhook_")]


def _settled(service: Service, job_id: str, status: str) -> Callable[[], bool]:
    return lambda: service.get_job(job_id).webhook_status == status


def _check_signed(request: Received, secret: str, event: str) -> dict:
    assert request.headers["content-type"] == "application/json"
    assert request.headers["cake-event"] == event
    assert verify_signature(secret, request.headers["cake-signature"], request.body)
    assert not verify_signature(secret, request.headers["cake-signature"], request.body + b" ")
    return json.loads(request.body)


def test_succeeded_job_calls_back_once_signed(
    make_service, receiver: WebhookReceiver, deliverer
) -> None:
    service = make_service(**FAST)
    job_id = service.add_job(Wine(), TINY_SPEC)
    _with_callback(service, job_id, receiver.url("/done"))
    assert service.get_job(job_id).webhook_status is None  # nothing to send while it runs

    assert process_job(service.ctx, job_id) == "succeeded"
    deliverer(service)
    (request,) = receiver.wait("/done", 1, timeout=20)
    wait_for(_settled(service, job_id, "delivered"), 10, "the delivery to be recorded")

    body = _check_signed(request, _secret(service), "job.succeeded")
    assert request.headers["cake-delivery"] == webhooks.delivery_id(job_id)
    job = service.get_job(job_id)
    now = job_json(job)
    # The body is the job as GET returns it at sending time: only the delivery state differs.
    assert body["webhook"] == {"status": "pending", "attempts": 1, "next_attempt_at": body[
        "webhook"]["next_attempt_at"]}  # fmt: skip
    assert now["webhook"] == {"status": "delivered", "attempts": 1, "next_attempt_at": None}
    assert {**body, "webhook": None} == {**now, "webhook": None}
    assert body["status"] == "succeeded" and body["metrics"]["agreement_synthetic"] >= 0
    assert body["callback_url"] == receiver.url("/done")

    (event,) = _webhook_events(service, job_id)
    assert (event.type, event.level, event.data["outcome"]) == ("webhook_attempt", "info",
                                                                 "delivered")  # fmt: skip
    assert event.data["status_code"] == 200 and event.data["attempt"] == 1
    assert event.data["duration_ms"] >= 0 and event.data["event"] == "job.succeeded"
    # Delivered means done: nothing is due any more, nothing is sent again.
    assert webhooks.deliver_due(service.ctx) == {}
    assert len(receiver.at("/done")) == 1


def test_receiver_failing_first_attempts_gets_retried_with_backoff(
    make_service, any_database, receiver: WebhookReceiver, deliverer
) -> None:
    any_service = make_service(**any_database, **FAST)
    # A teacher that is not TorchScript fails at once through the runner's real error path.
    job_id = any_service.add_job(Wine(), TINY_SPEC, teacher_bytes=b"not a model")
    url = receiver.script("/flaky", [500, 503], then=200)
    _with_callback(any_service, job_id, url)
    assert process_job(any_service.ctx, job_id) == "failed"
    assert any_service.get_job(job_id).webhook_status == "pending"

    deliverer(any_service)
    requests = receiver.wait("/flaky", 3, timeout=20)
    wait_for(_settled(any_service, job_id, "delivered"), 10, "the delivery to be recorded")
    assert len(receiver.at("/flaky")) == 3
    secret = _secret(any_service)
    bodies = [_check_signed(r, secret, "job.failed") for r in requests]
    assert {r.headers["cake-delivery"] for r in requests} == {webhooks.delivery_id(job_id)}
    assert [b["webhook"]["attempts"] for b in bodies] == [1, 2, 3]
    assert bodies[0]["error"]["code"] == "teacher_invalid"
    # exponential backoff: >= 0.1 s, then >= 0.2 s between attempts
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps

    attempts = _webhook_events(any_service, job_id)
    assert [e.type for e in attempts] == ["webhook_attempt"] * 3
    assert [e.data["outcome"] for e in attempts] == ["retry", "retry", "delivered"]
    assert [e.data["status_code"] for e in attempts] == [500, 503, 200]
    assert attempts[0].data["next_attempt_at"] is not None
    job = any_service.get_job(job_id)
    assert (job.webhook_status, job.webhook_attempts, job.webhook_next_at) == ("delivered", 3, None)


@pytest.mark.parametrize("bound", ["attempts", "age"])
def test_receiver_always_failing_is_given_up_within_bounds(
    make_service, receiver: WebhookReceiver, deliverer, bound: str
) -> None:
    limits = (
        {"CAKE_WEBHOOK_MAX_ATTEMPTS": "3"}
        if bound == "attempts"
        else {"CAKE_WEBHOOK_MAX_ATTEMPTS": "1000", "CAKE_WEBHOOK_MAX_AGE_S": "0.5"}
    )
    service = make_service(**FAST, **limits)
    job_id = service.add_job(Wine(), TINY_SPEC, teacher_bytes=b"not a model")
    _with_callback(service, job_id, receiver.script("/down", then=500))
    started = time.monotonic()
    assert process_job(service.ctx, job_id) == "failed"
    deliverer(service)
    wait_for(_settled(service, job_id, "failed"), 20, "the delivery to be given up")
    took = time.monotonic() - started

    sent = len(receiver.at("/down"))
    recorded = _webhook_events(service, job_id)
    assert [e.type for e in recorded] == ["webhook_attempt"] * sent + ["webhook_failed"]
    assert [e.data["outcome"] for e in recorded[:-1]] == ["retry"] * (sent - 1) + ["failed"]
    final = recorded[-1]
    assert final.level == "error" and final.data["attempts"] == sent
    assert "HTTP 500" in final.message
    job = service.get_job(job_id)
    assert (job.webhook_status, job.webhook_attempts, job.webhook_next_at) == ("failed", sent, None)
    if bound == "attempts":
        assert sent == 3 and "after 3 attempts" in final.message
    else:  # 0.1 + 0.2 (+ jitter) fit in 0.5 s, 0.4 more do not: 3 attempts at most
        assert 1 <= sent <= 3 and "after the job ended" in final.message
        assert took < 10
    assert webhooks.deliver_due(service.ctx) == {}  # given up is final
    assert len(receiver.at("/down")) == sent


def test_cancel_and_sweeper_failure_also_call_back(
    make_service, receiver: WebhookReceiver, deliverer
) -> None:
    """Every terminal transition schedules the callback in its own transaction: the API's cancel
    of a queued job and the sweeper's giving up on a job whose worker keeps dying."""
    service = make_service(**FAST, CAKE_JOB_MAX_ATTEMPTS="1")
    canceled = service.add_job(Wine(), TINY_SPEC)
    _with_callback(service, canceled, receiver.url("/canceled"))
    abandoned = service.add_job(Wine(), TINY_SPEC)
    _with_callback(service, abandoned, receiver.url("/abandoned"))
    silent = service.add_job(Wine(), TINY_SPEC)  # no callback_url: nothing to deliver

    with service.ctx.session_scope() as session:
        assert jobs.request_cancel(session, canceled) == "canceled"
        assert jobs.request_cancel(session, silent) == "canceled"
    assert jobs.claim_job(service.ctx, abandoned, "ghost-host:1") is not None
    with service.ctx.session_scope() as session:  # its worker stopped sending heartbeats long ago
        session.execute(
            update(Job).where(Job.id == abandoned).values(heartbeat_at=utcnow() - timedelta(days=1))
        )
    assert jobs.requeue_stale_jobs(service.ctx).failed == [abandoned]
    assert service.get_job(canceled).webhook_status == "pending"
    assert service.get_job(abandoned).webhook_status == "pending"
    assert service.get_job(silent).webhook_status is None

    deliverer(service)
    (cancel_request,) = receiver.wait("/canceled", 1, timeout=20)
    (abandon_request,) = receiver.wait("/abandoned", 1, timeout=20)
    secret = _secret(service)
    assert _check_signed(cancel_request, secret, "job.canceled")["status"] == "canceled"
    body = _check_signed(abandon_request, secret, "job.failed")
    assert body["error"]["code"] == "max_attempts"
    wait_for(_settled(service, canceled, "delivered"), 10, "the cancel callback to be recorded")
    wait_for(_settled(service, abandoned, "delivered"), 10, "the failure callback to be recorded")
    assert (
        service.get_job(silent).webhook_status is None
        and service.get_job(silent).webhook_attempts == 0
    )


def test_claim_is_exclusive_and_an_interrupted_attempt_is_retried(
    make_service, any_database, receiver: WebhookReceiver
) -> None:
    any_service = make_service(**any_database, **FAST)
    ctx = any_service.ctx
    job_id = any_service.add_job(Wine(), TINY_SPEC)
    _with_callback(any_service, job_id, receiver.url("/once"))
    with ctx.session_scope() as session:
        jobs.request_cancel(session, job_id)

    first = webhooks.claim_delivery(ctx, job_id)
    assert first is not None and first.attempt == 1
    assert webhooks.claim_delivery(ctx, job_id) is None  # another worker gets nothing meanwhile
    assert webhooks.due_deliveries(ctx) == []
    # The first worker dies mid-attempt; once its lease has passed, the next worker retries.
    with ctx.session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(webhook_next_at=utcnow() - timedelta(seconds=1))
        )
    assert webhooks.deliver(ctx, job_id) == "delivered"
    (request,) = receiver.at("/once")
    assert json.loads(request.body)["webhook"]["attempts"] == 2
    assert request.headers["cake-delivery"] == first.headers["Cake-Delivery"]
    # The interrupted attempt's late answer changes nothing.
    late = webhooks.AttemptResult(False, 500, None, 1.0)
    assert webhooks.record_attempt(ctx, first, late) == "superseded"
    job = any_service.get_job(job_id)
    assert (job.webhook_status, job.webhook_attempts) == ("delivered", 2)


def test_redirects_are_not_followed_and_attempts_are_time_limited(
    receiver: WebhookReceiver,
) -> None:
    moved = receiver.script("/moved", then=302, location=receiver.url("/elsewhere"))
    result = webhooks.post_once(moved, b"{}", {}, timeout_s=5, allow_private=True)
    assert (result.ok, result.status_code) == (False, 302)
    assert receiver.at("/elsewhere") == []

    slow = receiver.script("/slow", then=200, delay_s=2.0)
    result = webhooks.post_once(slow, b"{}", {}, timeout_s=0.3, allow_private=True)
    assert not result.ok and result.status_code is None
    assert "timed out" in (result.error or "") and result.duration_ms < 1500

    refused = webhooks.post_once(
        receiver.url("/private"), b"{}", {}, timeout_s=5, allow_private=False
    )
    assert not refused.ok and "not a public address" in (refused.error or "")
    assert receiver.at("/private") == []

    ok = webhooks.post_once(receiver.url("/ok"), b"{}", {}, timeout_s=5, allow_private=True)
    assert (ok.ok, ok.status_code, ok.error) == (True, 200, None)


def test_rotated_secret_keeps_verifying_for_the_grace_period_then_not(
    make_service, any_database, receiver: WebhookReceiver
) -> None:
    """A receiver that still holds the old secret verifies callbacks sent during the grace
    period (the header carries both signatures, the new one first) and refuses those sent
    after it; the new secret verifies throughout."""
    service = make_service(**any_database, **FAST, CAKE_WEBHOOK_SECRET_GRACE_S="3600")
    ctx = service.ctx
    old = _secret(service)
    with ctx.session_scope() as session:
        row = webhooks.rotate_webhook_secret(session, LOCAL_TENANT, 3600)
        new, until = row.webhook_secret, row.previous_webhook_secret_expires_at
    assert new != old and until is not None
    assert timedelta(minutes=59) < until - utcnow() <= timedelta(hours=1)

    def delivered(path: str) -> Received:
        job_id = service.add_job(Wine(), TINY_SPEC)
        _with_callback(service, job_id, receiver.url(path))
        with ctx.session_scope() as session:
            jobs.request_cancel(session, job_id)
        assert webhooks.deliver(ctx, job_id) == "delivered"
        (request,) = receiver.at(path)
        return request

    during = delivered("/grace")
    header = during.headers["cake-signature"]
    assert len(parse_signature(header)[1]) == 2
    assert header == sign(new, during.body, parse_signature(header)[0], also=[old])
    assert verify_signature(old, header, during.body)
    assert verify_signature(new, header, during.body)

    # The grace period ends (the expiry moved into the past instead of waiting a day).
    with ctx.session_scope() as session:
        session.execute(
            update(Tenant)
            .where(Tenant.name == LOCAL_TENANT)
            .values(previous_webhook_secret_expires_at=utcnow() - timedelta(seconds=1))
        )
    after = delivered("/after")
    header = after.headers["cake-signature"]
    assert len(parse_signature(header)[1]) == 1
    assert not verify_signature(old, header, after.body)
    assert verify_signature(new, header, after.body)

    # Rotating twice within a grace period keeps only the secret the last rotation replaced.
    with ctx.session_scope() as session:
        middle = webhooks.rotate_webhook_secret(session, LOCAL_TENANT, 3600).webhook_secret
        latest = webhooks.rotate_webhook_secret(session, LOCAL_TENANT, 3600)
        assert webhooks.signing_secrets(latest) == [latest.webhook_secret, middle]
        assert new not in webhooks.signing_secrets(latest)
