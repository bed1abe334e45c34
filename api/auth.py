"""API keys: who a request acts for, and how fast it may ask.

``Authorization: Bearer <key>`` names a key; the key names its tenant. With no live key in the
database the service is in API.md's single-user local mode: every request is tenant ``local``
and ``cake serve`` listens on loopback only. Once a key exists every ``/v1`` request needs one.

Checked keys are trusted for ``auth_cache_s`` (5 s by default) so that pollers cost no
database round trip per request; a revoked key therefore stops working within that time.
The per-key request rate limit is a token bucket in this process: with N API processes the
service-wide rate is up to N times the setting.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from cake_shared.limits import limits_for
from cake_shared.models import LOCAL_TENANT, utcnow
from cake_shared.settings import Settings
from cake_shared.tenants import hash_key, keys_configured, tenant_for_secret

#: How often ``last_used_at`` is written for a key in use (it is informational).
LAST_USED_EVERY_S = 60.0


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str | None  # None in local mode
    requests_per_minute: int  # 0: unlimited


LOCAL = Principal(tenant=LOCAL_TENANT, key_id=None, requests_per_minute=0)


def unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def missing_key() -> ApiError:
    return unauthorized(
        "this service requires an API key: send 'Authorization: Bearer <key>' "
        "(an administrator creates one with 'cake keys create --tenant NAME')"
    )


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key: ``rate`` requests per minute, bursts of up to ``rate``."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: int, now: float | None = None) -> float:
        """0.0 if the request may go ahead, else the seconds until a token is back."""
        if per_minute <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        refill = per_minute / 60.0
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(per_minute), now)
            bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * refill)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / refill


@dataclass
class Authenticator:
    """Resolves a presented key to a Principal, with a short-lived cache (see module doc)."""

    settings: Settings
    sessions: sessionmaker[Session]
    limiter: RateLimiter = field(default_factory=RateLimiter)
    _keys_on: tuple[bool, float] | None = None
    _cache: dict[str, tuple[Principal | None, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cached(self, secret: str | None) -> Principal | None:
        """The answer from the cache without touching the database, if it is fresh.

        Returns LOCAL in local mode; raises 401 for a cached unknown key; None on a miss.
        """
        now = time.monotonic()
        keys_on = self._keys_on
        if keys_on is None or keys_on[1] < now:
            return None
        if not keys_on[0]:
            return LOCAL
        if secret is None:
            raise missing_key()
        hit = self._cache.get(hash_key(secret))
        if hit is None or hit[1] < now:
            return None
        if hit[0] is None:
            raise unauthorized("the API key is not valid (unknown or revoked)")
        return hit[0]

    def resolve(self, secret: str | None) -> Principal:
        """Look the key up in the database (thread pool), refresh the cache, answer."""
        now = time.monotonic()
        ttl = self.settings.auth_cache_s
        with self.sessions() as session:
            keys_on = keys_configured(session)
            with self._lock:
                self._keys_on = (keys_on, now + ttl)
            if not keys_on:
                return LOCAL
            if secret is None:
                raise missing_key()
            digest = hash_key(secret)
            principal = self._lookup(session, secret)
        with self._lock:
            self._cache[digest] = (principal, now + ttl)
            if len(self._cache) > 10_000:  # bound memory under a flood of random keys
                self._cache.clear()
        if principal is None:
            raise unauthorized("the API key is not valid (unknown or revoked)")
        return principal

    def _lookup(self, session: Session, secret: str) -> Principal | None:
        key = tenant_for_secret(session, secret)
        if key is None:
            return None
        rate = limits_for(session, self.settings, key.tenant).requests_per_minute
        last = key.last_used_at
        if last is None or (utcnow() - last).total_seconds() > LAST_USED_EVERY_S:
            key.last_used_at = utcnow()
            session.commit()
        return Principal(tenant=key.tenant, key_id=key.id, requests_per_minute=rate)

    def check_rate(self, principal: Principal) -> None:
        if principal.key_id is None:
            return
        wait = self.limiter.take(principal.key_id, principal.requests_per_minute)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests for this API key (limit {principal.requests_per_minute} "
                f"per minute); retry after {retry} s",
                headers={"Retry-After": str(retry)},
            )

    def forget(self) -> None:
        """Drop the cache (tests; a key created in this process)."""
        with self._lock:
            self._keys_on = None
            self._cache.clear()
