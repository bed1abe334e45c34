"""Webhook signatures: how the service signs a job callback, and how a receiver checks it.

The one definition of the signing rule: the service's sender (:mod:`cake_shared.webhooks`)
signs with it and the client SDK re-exports it (:mod:`cake_client.webhooks`) for receivers, so
the two sides cannot drift apart, and ``cake_shared`` does not depend on the client SDK.

The service POSTs the finished job to the job's ``callback_url`` with the header::

    Cake-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

where ``secret`` is the tenant's webhook secret (``GET /v1/webhooks/secret``). A receiver
recomputes the HMAC over the *raw* request body (not re-serialized JSON), compares in constant
time, and refuses timestamps too far from its clock so a captured request cannot be replayed
later. ``Cake-Delivery`` is the same on every retry of one delivery: use it to ignore repeats.

After a secret rotation the previous secret stays valid for a grace period, and meanwhile the
header carries one ``v1`` per secret, the new one first::

    Cake-Signature: t=<unix seconds>,v1=<HMAC with the new secret>,v1=<HMAC with the old one>

A receiver accepts the request when any ``v1`` matches its secret, so it can switch to the new
secret at any moment of the grace period without refusing a delivery.

Only the standard library is used, so receivers can copy this module as is, or import it
through the client::

    from cake_client.webhooks import verify_signature

    if not verify_signature(secret, request.headers["Cake-Signature"], raw_body):
        return 400
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

SIGNATURE_HEADER = "Cake-Signature"
EVENT_HEADER = "Cake-Event"
DELIVERY_HEADER = "Cake-Delivery"
ALGORITHM = "hmac-sha256"
#: Default accepted distance between the signature's timestamp and the receiver's clock.
DEFAULT_TOLERANCE_S = 300.0


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(
    secret: str, body: bytes, timestamp: int | None = None, *, also: Iterable[str] = ()
) -> str:
    """The ``Cake-Signature`` header value for ``body`` signed at ``timestamp`` (default now).

    ``also``: more secrets to sign with, each adding a ``v1`` after ``secret``'s (the previous
    secret during a rotation's grace period), all over the same timestamp.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return ",".join([f"t={ts}", *(f"v1={_digest(key, ts, body)}" for key in (secret, *also))])


def parse_signature(header: str) -> tuple[int | None, list[str]]:
    """(timestamp, v1 signatures) of a header; (None, []) when it has no readable timestamp.

    Several ``v1`` entries are allowed (a sender may sign with two secrets while rotating).
    """
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value.lower())
    return timestamp, signatures


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes | str,
    tolerance_s: float | None = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``header`` is a valid ``Cake-Signature`` of ``body`` under ``secret``.

    ``body`` must be the raw bytes received (a ``str`` is UTF-8 encoded). ``tolerance_s``
    bounds how old (or how far in the future) the signed timestamp may be; None skips that
    check (tests, replays of stored deliveries).
    """
    if not header or not secret:
        return False
    timestamp, signatures = parse_signature(header)
    if timestamp is None or not signatures:
        return False
    if tolerance_s is not None:
        current = time.time() if now is None else now
        if abs(current - timestamp) > tolerance_s:
            return False
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = _digest(secret, timestamp, raw)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures)
