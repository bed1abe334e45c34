"""Webhook signatures (``cake_client.webhooks``): what a receiver accepts and refuses."""

from __future__ import annotations

import hashlib
import hmac

from cake_client import verify_signature as exported
from cake_client.webhooks import parse_signature, sign, verify_signature

SECRET = "whsec_test"
BODY = b'{"id":"job_1","status":"succeeded"}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert parse_signature(header) == (1_700_000_000, [expected])
    assert exported is verify_signature


def test_receiver_refuses_tampering_other_secrets_and_stale_timestamps() -> None:
    header = sign(SECRET, BODY, timestamp=1_700_000_000)
    now = 1_700_000_100.0
    assert verify_signature(SECRET, header, BODY, now=now)
    assert verify_signature(SECRET, header, BODY.decode(), now=now)  # str is UTF-8 encoded
    assert not verify_signature(SECRET, header, BODY + b" ", now=now)
    assert not verify_signature("whsec_other", header, BODY, now=now)
    assert not verify_signature(SECRET, header, BODY, now=1_700_000_000 + 301)
    assert not verify_signature(SECRET, header, BODY, now=1_700_000_000 - 301)
    assert verify_signature(SECRET, header, BODY, tolerance_s=None, now=0)
    # A timestamp changed after signing breaks the signature.
    assert not verify_signature(SECRET, header.replace("t=1700000000", "t=1700000050"), BODY,
                                now=now)  # fmt: skip


def test_several_v1_entries_and_malformed_headers() -> None:
    good = sign(SECRET, BODY, timestamp=1_700_000_000)
    ts, (digest,) = parse_signature(good)
    rotated = f"t={ts},v1={'0' * 64},v1={digest}"
    assert verify_signature(SECRET, rotated, BODY, now=ts)
    for header in (None, "", "v1=" + digest, f"t={ts}", "t=abc,v1=" + digest, "garbage"):
        assert not verify_signature(SECRET, header, BODY, now=ts), header
    assert not verify_signature("", good, BODY, now=ts)


def test_rotation_grace_header_signs_with_both_secrets() -> None:
    """During a rotation's grace period the sender signs with the new and the old secret; a
    receiver holding either one verifies, one holding neither does not."""
    header = sign("whsec_new", BODY, timestamp=1_700_000_000, also=["whsec_old"])
    ts, digests = parse_signature(header)
    assert ts == 1_700_000_000 and len(digests) == 2
    assert header == (
        f"t={ts},v1={sign('whsec_new', BODY, ts).split('v1=')[1]},"
        f"v1={sign('whsec_old', BODY, ts).split('v1=')[1]}"
    )
    for secret in ("whsec_new", "whsec_old"):
        assert verify_signature(secret, header, BODY, now=ts), secret
        assert not verify_signature(secret, header, BODY + b"x", now=ts), secret
    assert not verify_signature("whsec_other", header, BODY, now=ts)
    assert sign(SECRET, BODY, timestamp=ts, also=()) == sign(SECRET, BODY, timestamp=ts)
