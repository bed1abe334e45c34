"""``Idempotency-Key`` for the POSTs that create something (teachers, jobs, data sets).

The first successful result is stored (status code and body) under (tenant, key) in the same
transaction that creates the object, so a retry after a lost response can never create a second
object: the same key with the same request replays the stored result; with a different request
it is a 409. Error results are not stored (the retry is simply tried again). Keys expire after
``CAKE_IDEMPOTENCY_TTL_S`` (24 h).

The request hash is over the request's *content*: canonical JSON for JSON bodies, part names and
values plus each file's SHA-256 for multipart bodies (whose boundary differs per request).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import ApiError, conflict, validation_error
from cake_shared.models import IdempotencyRecord, utcnow

MAX_KEY_LENGTH = 256
REPLAY_HEADER = "Idempotent-Replayed"


def json_hash(data: Any) -> str:
    """Hash of a JSON value independent of key order and whitespace."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class IdemRequest:
    """One request's idempotency identity: the key, what it was for, and the content hash."""

    tenant: str
    key: str
    method_path: str
    request_hash: str


def make_request(
    tenant: str, key: str | None, method_path: str, request_hash: str
) -> IdemRequest | None:
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH:
        raise validation_error(
            ["header", "Idempotency-Key"], f"must be 1 to {MAX_KEY_LENGTH} characters"
        )
    return IdemRequest(tenant, key, method_path, request_hash)


def replay(session: Session, req: IdemRequest | None, ttl_s: int) -> JSONResponse | None:
    """The stored response for this key, None when there is none; 409 on a different request."""
    if req is None:
        return None
    record = session.get(IdempotencyRecord, (req.tenant, req.key))
    if record is None:
        return None
    if record.created_at < utcnow() - timedelta(seconds=ttl_s):
        session.delete(record)
        session.commit()
        return None
    if record.method_path != req.method_path or record.request_hash != req.request_hash:
        raise conflict(
            "this Idempotency-Key was already used with a different request; use a new key "
            "for a new request"
        )
    return JSONResponse(
        record.response, status_code=record.status_code, headers={REPLAY_HEADER: "true"}
    )


def remember(
    session: Session, req: IdemRequest | None, status_code: int, body: dict[str, Any], ttl_s: int
) -> None:
    """Add the record to the session (committed with the created object), pruning old keys."""
    if req is None:
        return
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.tenant == req.tenant, IdempotencyRecord.created_at < cutoff
        )
    )
    session.add(
        IdempotencyRecord(
            tenant=req.tenant,
            key=req.key,
            method_path=req.method_path,
            request_hash=req.request_hash,
            status_code=status_code,
            response=body,
        )
    )


def replay_after_race(session: Session, req: IdemRequest | None, ttl_s: int) -> JSONResponse:
    """After an IntegrityError on commit: a concurrent request with the same key won the race."""
    session.rollback()
    response = replay(session, req, ttl_s)
    if response is None:
        raise ApiError(409, "conflict", "a concurrent request with this Idempotency-Key failed")
    return response


def commit_created(
    session: Session,
    req: IdemRequest | None,
    ttl_s: int,
    status_code: int,
    body: dict[str, Any],
) -> JSONResponse | None:
    """Record the response under the key, commit, and return None when the caller's write won.

    When a concurrent request with the same key committed first, the unique key makes this
    commit fail and the first request's response is returned instead (the caller must not act
    on its own write then, e.g. must not enqueue).
    """
    remember(session, req, status_code, body, ttl_s)
    try:
        session.commit()
    except IntegrityError:
        return replay_after_race(session, req, ttl_s)
    return None


def created_response(status_code: int, body: dict[str, Any], location: str) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers={"Location": location})
