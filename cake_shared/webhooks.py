"""Job webhooks: when a job with a ``callback_url`` ends, POST it there, signed, with retries.

Durability: the transition to a terminal status sets ``webhook_status`` to ``pending`` and
``webhook_next_at=now`` in the same transaction (``cake_shared.jobs``), so a delivery is never
lost between the job ending and the first attempt. Workers run :func:`deliver_due` (see
``worker.webhooks``): each attempt is first *claimed* with a compare-and-set that bumps
``webhook_attempts`` and pushes ``webhook_next_at`` out by a lease, so two workers never send
the same attempt at once; a worker that dies mid-attempt leaves the lease to expire and the
next worker tries again (at-least-once: ``Cake-Delivery`` is the same on every retry, so
receivers can drop repeats). After every attempt a ``webhook_attempt`` event is written and
the delivery is marked ``delivered`` (any 2xx), scheduled again with exponential backoff, or
given up (``failed``, with a ``webhook_failed`` event) after ``webhook_max_attempts`` attempts
or once the next attempt would fall more than ``webhook_max_age_s`` after the job ended.

The request: ``POST callback_url`` with the job object exactly as ``GET /v1/jobs/{id}``
returns it at that moment (``webhook.status`` is ``pending`` in it), and the headers
``Cake-Signature`` (see :mod:`cake_shared.signing`), ``Cake-Event`` (``job.succeeded``,
``job.failed``, ``job.canceled``), ``Cake-Delivery`` and ``Content-Type: application/json``.
Redirects are never followed (a 3xx is a failed attempt), proxies from the environment are not
used, and at most :data:`MAX_RESPONSE_BYTES` of the answer are read.

The address: each attempt resolves the callback host once (:func:`resolve_callback`), refuses
the attempt if any address is not public (unless ``webhook_allow_private``), and connects to
exactly those checked addresses (:class:`PinnedBackend`); the URL's host name still goes in the
``Host`` header, the TLS SNI and the certificate check. No lookup happens after the check, so a
name that answers with a public address to the check and a loopback one a moment later (DNS
rebinding) cannot steer the request into the service's own network.

The secret: after a rotation the previous secret keeps signing for ``webhook_secret_grace_s``
(:func:`rotate_webhook_secret`); meanwhile ``Cake-Signature`` carries one ``v1`` per secret,
the current one first, and a receiver that holds either accepts the callback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpcore
import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cake_shared.job_events import add_event
from cake_shared.job_view import iso_utc, job_json
from cake_shared.models import Job, Tenant, utcnow
from cake_shared.retry import backoff_delay
from cake_shared.settings import Settings
from cake_shared.signing import (
    ALGORITHM,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    parse_signature,
    sign,
    verify_signature,
)
from cake_shared.status import WebhookStatus
from cake_shared.tenants import get_or_create_tenant, new_webhook_secret

if TYPE_CHECKING:
    from cake_shared.services import Services

__all__ = [
    "ALGORITHM",
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "AttemptResult",
    "CallbackURLError",
    "Claim",
    "PinnedBackend",
    "ResolvedCallback",
    "check_callback_url",
    "claim_delivery",
    "deliver",
    "deliver_due",
    "due_deliveries",
    "parse_signature",
    "post_once",
    "record_attempt",
    "refuse_non_public",
    "resolve_callback",
    "rotate_webhook_secret",
    "sign",
    "signing_secrets",
    "validate_callback_url",
    "verify_signature",
]

log = logging.getLogger("cake.webhooks")

MAX_URL_LENGTH = 2048
#: At most this much of a receiver's answer is read (its content is not used).
MAX_RESPONSE_BYTES = 4096
#: Random extra share added to each backoff delay so that retries of many jobs spread out: an
#: attempt never comes earlier than the documented delay, and at most 20% later.
BACKOFF_JITTER = 0.2
_DELIVERY_NAMESPACE = uuid.UUID("5b0f4c53-7a1e-4c0e-9a57-6b1e0c2f7d11")
USER_AGENT = "cake-distill-webhooks/1"


# --------------------------------------------------------------------------------------------
# the callback URL
# --------------------------------------------------------------------------------------------


class CallbackURLError(ValueError):
    """A callback URL the service will not call; the message says why, for a 422."""


def validate_callback_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host, no credentials and no fragment.

    Syntax only (no DNS): this is what request validation runs. See :func:`check_callback_url`
    for the address check of deployments that refuse private networks.
    """
    if len(url) > MAX_URL_LENGTH:
        raise CallbackURLError(f"must be at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise CallbackURLError("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError as exc:
        raise CallbackURLError(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise CallbackURLError("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise CallbackURLError("must not contain credentials (user:password@)")
    if not parts.hostname:
        raise CallbackURLError("must name a host")
    if parts.fragment or url.endswith("#"):
        raise CallbackURLError("must not have a #fragment")
    return url


def _non_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True)
class ResolvedCallback:
    """A callback host looked up once: the addresses an attempt may connect to, in the
    resolver's order (duplicates dropped), and the port."""

    host: str
    port: int
    addresses: tuple[str, ...]

    def non_public(self) -> str | None:
        """The first address that is not public (loopback, private, link-local, shared,
        reserved, multicast), or None when every address is public."""
        return next((a for a in self.addresses if _non_public(a)), None)

    def refuse_non_public(self) -> None:
        """Raise :class:`CallbackURLError` unless every address is public: one internal
        address is enough to refuse, since the connection might pick it."""
        address = self.non_public()
        if address is not None:
            raise CallbackURLError(
                f"host {self.host!r} resolves to {address}, which is not a "
                "public address; this service only calls public addresses"
            )


def resolve_callback(url: str) -> ResolvedCallback:
    """Look ``url``'s host up (one ``getaddrinfo``; an IP literal needs no DNS).

    Raises :class:`CallbackURLError` when the host does not resolve.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise CallbackURLError(f"host {host!r} does not resolve ({exc})") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise CallbackURLError(f"host {host!r} does not resolve (no addresses)")
    return ResolvedCallback(host, port, addresses)


def non_public_address(url: str) -> str | None:
    """The first address ``url``'s host resolves to that is not public, or None when every
    address is public. Raises :class:`CallbackURLError` when the host does not resolve."""
    return resolve_callback(url).non_public()


def refuse_non_public(url: str) -> None:
    """Raise :class:`CallbackURLError` unless every address of ``url``'s host is public."""
    resolve_callback(url).refuse_non_public()


def check_callback_url(url: str, settings: Settings) -> str:
    """Syntax, then (when ``webhook_allow_private`` is off) refuse hosts on internal networks:
    a managed service must not become a way to reach its own private network (SSRF)."""
    validate_callback_url(url)
    if not settings.webhook_allow_private:
        refuse_non_public(url)
    return url


# --------------------------------------------------------------------------------------------
# one attempt
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptResult:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float

    def describe(self) -> str:
        if self.status_code is not None:
            return f"HTTP {self.status_code}"
        return self.error or "no answer"


class PinnedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that connects only to addresses checked beforehand.

    httpcore hands ``connect_tcp`` the URL's host name; a plain backend would look it up again
    and could get another answer than the check did (DNS rebinding). This one ignores that
    name and dials the pinned IP addresses in order (the next one if a connection is refused,
    as ``socket.create_connection`` does with a resolver's list), so no lookup happens after
    the check. Everything above the socket is untouched: httpx still sends the URL's host in
    ``Host``, and httpcore's TLS uses it for SNI and to check the certificate's name.
    """

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = tuple(addresses)
        if not self.addresses:
            raise ValueError("PinnedBackend needs at least one address")
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        options = list(socket_options or ())
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in self.addresses:
            try:
                # an IP literal: socket.create_connection underneath does no DNS lookup
                return self._inner.connect_tcp(address, port, timeout, local_address, options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks connect over TCP only")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _PinnedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connection pool dials through :class:`PinnedBackend`.

    ``HTTPTransport`` takes no network backend, so its pool is replaced by one built with the
    same TLS context; request handling, timeouts and error mapping stay httpx's own."""

    def __init__(self, addresses: Iterable[str], verify: ssl.SSLContext | bool = True) -> None:
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=context, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=1,
            network_backend=PinnedBackend(addresses),
        )


def post_once(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    allow_private: bool,
    verify: ssl.SSLContext | bool = True,
) -> AttemptResult:
    """One POST: ok for a 2xx answer. Never raises; never follows a redirect.

    The host is resolved here, once, and checked (when ``allow_private`` is off) again at send
    time, since DNS may have changed since the job was created; the connection then goes to
    those very addresses (:class:`PinnedBackend`). ``verify`` is the TLS trust for https
    receivers (default: the certifi bundle; tests pass a context that trusts their own CA).
    """
    start = time.monotonic()

    def done(ok: bool, code: int | None, error: str | None) -> AttemptResult:
        return AttemptResult(ok, code, error, round((time.monotonic() - start) * 1000, 1))

    try:
        resolved = resolve_callback(url)
        if not allow_private:
            resolved.refuse_non_public()
        with (
            httpx.Client(
                transport=_PinnedTransport(resolved.addresses, verify),
                timeout=httpx.Timeout(timeout_s),
                follow_redirects=False,
                trust_env=False,
            ) as client,
            client.stream("POST", url, content=body, headers=headers) as response,
        ):
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= MAX_RESPONSE_BYTES or time.monotonic() - start > timeout_s:
                    break
            code = response.status_code
        return done(200 <= code < 300, code, None)
    except CallbackURLError as exc:
        return done(False, None, f"refused: {exc}")
    except httpx.TimeoutException:
        return done(False, None, f"timed out after {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return done(False, None, f"{type(exc).__name__}: {exc}"[:500])
    except Exception as exc:  # a receiver must never be able to crash the deliverer
        log.exception("webhook POST to %s failed unexpectedly", url)
        return done(False, None, f"{type(exc).__name__}"[:500])


# --------------------------------------------------------------------------------------------
# the signing secrets
# --------------------------------------------------------------------------------------------


def signing_secrets(tenant: Tenant, now: datetime | None = None) -> list[str]:
    """The secrets a callback is signed with now: the current one first, then the previous one
    while its grace period lasts (receivers that have not switched yet still verify)."""
    now = now or utcnow()
    secrets = [tenant.webhook_secret]
    previous, until = tenant.previous_webhook_secret, tenant.previous_webhook_secret_expires_at
    if previous and until is not None and until > now and previous != tenant.webhook_secret:
        secrets.append(previous)
    return secrets


def rotate_webhook_secret(session: Session, name: str, grace_s: float) -> Tenant:
    """Give tenant ``name`` a new secret and commit; the replaced one keeps signing for
    ``grace_s`` seconds (none when 0).

    Only one previous secret is kept: rotating again within the grace period drops the oldest
    at once, so a receiver must have switched to a secret before it is rotated away twice.
    """
    row = get_or_create_tenant(session, name)
    now = utcnow()
    if grace_s > 0:
        row.previous_webhook_secret = row.webhook_secret
        row.previous_webhook_secret_expires_at = now + timedelta(seconds=grace_s)
    else:
        row.previous_webhook_secret = None
        row.previous_webhook_secret_expires_at = None
    row.webhook_secret = new_webhook_secret()
    session.commit()
    return row


# --------------------------------------------------------------------------------------------
# durable delivery state
# --------------------------------------------------------------------------------------------


def delivery_id(job_id: str) -> str:
    """Stable for a job: a job ends once, so it has exactly one delivery, however many tries."""
    return "dlv_" + uuid.uuid5(_DELIVERY_NAMESPACE, job_id).hex


def backoff_s(attempt: int, settings: Settings) -> float:
    """Delay after failed attempt ``attempt`` (1-based): doubling, capped, with jitter.

    The project's one backoff formula (:func:`cake_shared.retry.backoff_delay`); only the
    jitter range is the webhooks' own (see :data:`BACKOFF_JITTER`)."""
    return backoff_delay(
        attempt,
        settings.webhook_backoff_s,
        settings.webhook_backoff_max_s,
        spread=(1.0, 1.0 + BACKOFF_JITTER),
    )


def _lease_s(settings: Settings) -> float:
    """How long a claimed attempt blocks others: well beyond the attempt's own time limit."""
    return 2 * settings.webhook_timeout_s + 30


@dataclass(frozen=True)
class Claim:
    """An attempt this process holds: what to send, and what the outcome is recorded against."""

    job_id: str
    attempt: int
    url: str
    body: bytes
    headers: dict[str, str]
    finished_at: datetime


def due_deliveries(services: Services, limit: int = 20) -> list[str]:
    """Ids of jobs with a pending delivery whose next attempt is due, oldest first."""
    now = utcnow()
    with services.session_scope() as session:
        return list(
            session.scalars(
                select(Job.id)
                .where(Job.webhook_status == WebhookStatus.PENDING, Job.webhook_next_at <= now)
                .order_by(Job.webhook_next_at)
                .limit(limit)
            )
        )


def claim_delivery(services: Services, job_id: str) -> Claim | None:
    """Take the next attempt of ``job_id``'s delivery if it is due and nobody else took it."""
    settings = services.settings
    now = utcnow()
    with services.session_scope() as session:
        seen = session.scalar(
            select(Job.webhook_attempts).where(
                Job.id == job_id,
                Job.webhook_status == WebhookStatus.PENDING,
                Job.webhook_next_at <= now,
            )
        )
        if seen is None:
            return None
        attempt = int(seen or 0) + 1
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.webhook_status == WebhookStatus.PENDING,
                Job.webhook_next_at <= now,
                Job.webhook_attempts == seen,
            )
            .values(
                webhook_attempts=attempt,
                webhook_next_at=now + timedelta(seconds=_lease_s(settings)),
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            session.rollback()
            return None
        session.commit()  # the claim stands before anything else can roll it back
        job = session.get(Job, job_id)
        if job is None or not job.callback_url:
            return None
        current, *previous = signing_secrets(get_or_create_tenant(session, job.tenant), now)
        body = json.dumps(job_json(job), separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(current, body, also=previous),
            EVENT_HEADER: f"job.{job.status}",
            DELIVERY_HEADER: delivery_id(job.id),
        }
        return Claim(job.id, attempt, job.callback_url, body, headers, job.finished_at or now)


def record_attempt(services: Services, claim: Claim, result: AttemptResult) -> str:
    """Write the attempt's event and the delivery's next state; returns ``delivered``,
    ``retry``, ``failed``, ``superseded`` (a later attempt took over: this one outlived its
    lease) or ``gone`` (the job was deleted meanwhile)."""
    settings = services.settings
    now = utcnow()
    data: dict[str, Any] = {
        "attempt": claim.attempt,
        "delivery_id": claim.headers[DELIVERY_HEADER],
        "event": claim.headers[EVENT_HEADER],
        "status_code": result.status_code,
        "error": result.error,
        "duration_ms": result.duration_ms,
    }
    what = f"attempt {claim.attempt}: {result.describe()} in {result.duration_ms:.0f} ms"
    with services.session_scope() as session:
        if session.get(Job, claim.job_id) is None:
            return "gone"
        if result.ok:
            session.execute(
                update(Job)
                # failed too: a late answer of an attempt that outlived its lease still counts
                .where(
                    Job.id == claim.job_id,
                    Job.webhook_status.in_((WebhookStatus.PENDING, WebhookStatus.FAILED)),
                )
                .values(webhook_status=WebhookStatus.DELIVERED, webhook_next_at=None)
                .execution_options(synchronize_session=False)
            )
            add_event(
                session,
                claim.job_id,
                "webhook_attempt",
                f"webhook delivered ({what})",
                data={**data, "outcome": WebhookStatus.DELIVERED},
            )
            return WebhookStatus.DELIVERED
        delay = backoff_s(claim.attempt, settings)
        next_at = now + timedelta(seconds=delay)
        deadline = claim.finished_at + timedelta(seconds=settings.webhook_max_age_s)
        give_up = claim.attempt >= settings.webhook_max_attempts or next_at > deadline
        values: dict[str, Any] = (
            {"webhook_status": WebhookStatus.FAILED, "webhook_next_at": None}
            if give_up
            else {"webhook_next_at": next_at}
        )
        changed = session.execute(
            update(Job)
            .where(
                Job.id == claim.job_id,
                Job.webhook_status == WebhookStatus.PENDING,
                Job.webhook_attempts == claim.attempt,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed != 1:
            # A later attempt took over (this one outlived its lease) or the delivery ended.
            outcome, give_up = "superseded", False
            message = f"webhook {what}; a later attempt has taken over"
        else:
            outcome = WebhookStatus.FAILED if give_up else "retry"
            message = f"webhook {what}"
            if not give_up:
                message += f"; next attempt in {delay:.1f} s"
        add_event(
            session,
            claim.job_id,
            "webhook_attempt",
            message,
            level="warning",
            data={
                **data,
                "outcome": outcome,
                "next_attempt_at": iso_utc(next_at) if outcome == "retry" else None,
            },
        )
        if give_up:
            why = (
                f"after {claim.attempt} attempts"
                if claim.attempt >= settings.webhook_max_attempts
                else f"{settings.webhook_max_age_s:g} s after the job ended"
            )
            add_event(
                session,
                claim.job_id,
                "webhook_failed",
                f"webhook given up {why}; last attempt: {result.describe()}",
                level="error",
                data={**data, "attempts": claim.attempt},
            )
        return outcome


def deliver(services: Services, job_id: str) -> str | None:
    """Claim, send and record one attempt of ``job_id``'s delivery; None when not due or taken."""
    settings = services.settings
    claim = claim_delivery(services, job_id)
    if claim is None:
        return None
    result = post_once(
        claim.url,
        claim.body,
        claim.headers,
        timeout_s=settings.webhook_timeout_s,
        allow_private=settings.webhook_allow_private,
    )
    outcome = record_attempt(services, claim, result)
    log.info("job %s: webhook attempt %d: %s -> %s", job_id, claim.attempt, result.describe(),
             outcome)  # fmt: skip
    return outcome


def deliver_due(services: Services, limit: int = 20) -> dict[str, str]:
    """Send every due attempt (up to ``limit``) one after another; job id -> outcome."""
    outcomes: dict[str, str] = {}
    for job_id in due_deliveries(services, limit):
        outcome = deliver(services, job_id)
        if outcome is not None:
            outcomes[job_id] = outcome
    return outcomes
