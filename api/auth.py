"""API keys: who a request acts for, and how fast it may ask.

``Authorization: Bearer <key>`` names a key; the key names its tenant. With no live key in the
database the service is in API.md's single-user local mode: every request is tenant ``local``
and ``cake serve`` listens on loopback only. Once a key exists every ``/v1`` request needs one.

Checked keys are trusted for ``auth_cache_s`` (5 s by default) so that pollers cost no
database round trip per request; a revoked key therefore stops working within that time. The
cache is bounded and evicts the least recently used key (cachetools), and unknown keys are kept
apart from valid ones, so a flood of random keys can neither grow memory nor push out the keys
that real clients use.

The per-key request rate (:class:`RequestRate`) is a moving window: counted in Redis by the
``limits`` package when the broker is Redis, so every API process counts against one limit;
in this process's memory otherwise (:class:`LocalMovingWindow`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import anyio
from cachetools import TTLCache
from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as SharedMovingWindow
from limits.errors import StorageError
from sqlalchemy.orm import Session, sessionmaker

from api.errors import ApiError
from cake_shared.limits import limits_for
from cake_shared.models import LOCAL_TENANT, utcnow
from cake_shared.settings import Settings
from cake_shared.tenants import hash_key, keys_configured, tenant_for_secret

log = logging.getLogger("cake.api.auth")

#: How often ``last_used_at`` is written for a key in use (it is informational).
LAST_USED_EVERY_S = 60.0
#: Valid keys kept in the cache at most (least recently used out first). Unknown keys have a
#: cache of their own of this size, so random keys only ever push out other random keys.
AUTH_CACHE_ENTRIES = 10_000
#: After Redis failed to count a request, how long this process counts in memory before it
#: tries Redis again (so an outage costs one failed call per interval, not one per request).
SHARED_RATE_RETRY_S = 5.0
#: Connect and read timeout of a rate-limit call to Redis: a request never waits longer for it.
SHARED_RATE_TIMEOUT_S = 1.0
#: Prefix of the rate-limit keys in the broker's Redis database (Celery's keys are unprefixed).
SHARED_RATE_PREFIX = "cake-rate"


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


def shared_rate_url(settings: Settings) -> str | None:
    """Where every API process can count requests: the broker when it is Redis (as deployed:
    ``docker-compose.yml``, ``tests/e2e``), as a ``limits`` async storage URL; None otherwise
    (the embedded set-up, one API process, counts in memory)."""
    url = settings.broker_url or ""
    if urlparse(url).scheme in ("redis", "rediss"):
        return "async+" + url
    return None


class LocalMovingWindow:
    """At most ``limit`` requests per key in any ``window_s`` seconds, counted in this process.

    The same moving window as the ``limits`` package's (and as the shared count in Redis): a
    refused request waits until the oldest counted one leaves the window. Kept here because
    ``limits``' in-memory storage started a timer thread to expire entries on nearly every
    request (a thread start per poll: the largest single cost of a status poll with a key) and
    inserted each entry at the front of a list. A deque per key, trimmed as it is read, needs
    neither. Keys are API key ids (a request is counted only after its key was checked), so
    their number is bounded by the keys that exist.
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._window_s = window_s
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, limit: int) -> float:
        """0.0 if the request may go ahead (it is counted), else the seconds (> 0) until the
        window has room again."""
        now = self._clock()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            horizon = now - self._window_s
            while hits and hits[0] <= horizon:
                hits.popleft()
            if len(hits) < limit:
                hits.append(now)
                return 0.0
            # Room comes when enough of the oldest have left for one more (a lowered limit can
            # leave more than ``limit`` counted).
            leaves = hits[len(hits) - limit]
        return max(0.001, leaves + self._window_s - now)


class RequestRate:
    """At most ``per_minute`` requests per key in any 60 s (the ``limits`` moving window).

    With ``shared_url`` (Redis) the count is shared by every API process, so N processes allow
    the limit once, not N times. When Redis cannot be reached, this process counts in its own
    memory for ``SHARED_RATE_RETRY_S`` and then tries Redis again: a broker outage loosens the
    limit to per-process for a while, but never refuses or fails a request by itself.
    """

    def __init__(self, shared_url: str | None = None) -> None:
        self._local = LocalMovingWindow()
        self._shared_url = shared_url
        self._shared: SharedMovingWindow | None = None
        self._shared_loop: asyncio.AbstractEventLoop | None = None
        self._shared_down_until = 0.0

    def _shared_limiter(self) -> SharedMovingWindow | None:
        """The Redis limiter of the running event loop: redis.asyncio connections belong to the
        loop that opened them. uvicorn runs one loop, so this is built once; a test client that
        runs each request in a loop of its own gets one per request instead of a broken one."""
        if not self._shared_url:
            return None
        loop = asyncio.get_running_loop()
        if self._shared is None or self._shared_loop is not loop:
            storage = RedisStorage(
                self._shared_url,
                implementation="redispy",  # the redis package the service already uses
                wrap_exceptions=True,
                key_prefix=SHARED_RATE_PREFIX,
                socket_connect_timeout=SHARED_RATE_TIMEOUT_S,
                socket_timeout=SHARED_RATE_TIMEOUT_S,
            )
            self._shared, self._shared_loop = SharedMovingWindow(storage), loop
        return self._shared

    async def take(self, key: str, per_minute: int) -> float:
        """0.0 if the request may go ahead (it is counted), else the seconds (> 0) until the
        window has room again."""
        if per_minute <= 0:
            return 0.0
        item = RateLimitItemPerMinute(per_minute)
        shared = self._shared_limiter()
        if shared is not None and time.monotonic() >= self._shared_down_until:
            try:
                wait = await self._take_shared(shared, item, key)
            except StorageError as exc:
                if not self._shared_down_until:
                    log.warning(
                        "cannot count requests in Redis (%s); counting in this process until "
                        "it answers again",
                        exc.storage_error or exc,
                    )
                self._shared_down_until = time.monotonic() + SHARED_RATE_RETRY_S
            else:
                if self._shared_down_until:
                    log.info("counting requests in Redis again")
                    self._shared_down_until = 0.0
                return wait
        return self._local.take(key, per_minute)

    @staticmethod
    async def _take_shared(limiter: SharedMovingWindow, item: RateLimitItem, key: str) -> float:
        if await limiter.hit(item, key):
            return 0.0
        return _until_room((await limiter.get_window_stats(item, key)).reset_time)


def _until_room(reset_time: float) -> float:
    """Seconds until ``reset_time`` (epoch seconds: the oldest counted request leaves the
    window), at least a millisecond, so a refusal never reads as "go ahead"."""
    return max(0.001, reset_time - time.time())


@dataclass
class Authenticator:
    """Resolves a presented key to a Principal, with a short-lived cache (see module doc)."""

    settings: Settings
    sessions: sessionmaker[Session]
    limiter: RequestRate = field(init=False)
    _keys_on: tuple[bool, float] | None = None
    #: key hash -> Principal; and the hashes of keys the database did not know.
    _valid: TTLCache[str, Principal] = field(init=False)
    _unknown: TTLCache[str, bool] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Lookups under way, by key hash ("" for no key): later requests for the key await them.
    _in_flight: dict[str, asyncio.Future[Principal]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ttl = self.settings.auth_cache_s
        self._valid = TTLCache(maxsize=AUTH_CACHE_ENTRIES, ttl=ttl)
        self._unknown = TTLCache(maxsize=AUTH_CACHE_ENTRIES, ttl=ttl)
        self.limiter = RequestRate(shared_rate_url(self.settings))

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
        digest = hash_key(secret)
        with self._lock:  # a cachetools read reorders the cache: not safe across threads
            principal = self._valid.get(digest)
            unknown = principal is None and digest in self._unknown
        if unknown:
            raise unauthorized("the API key is not valid (unknown or revoked)")
        return principal

    async def authenticate(
        self, secret: str | None, limiter: anyio.CapacityLimiter | None = None
    ) -> Principal:
        """The cached answer, else one database lookup on a worker thread (``limiter`` bounds
        those threads) shared by every request that asks for the same key meanwhile.

        Without the sharing, the cache's expiry every ``auth_cache_s`` turned a burst of pollers
        (200 clients polling on the same second) into 200 identical lookups, two queries each.
        """
        principal = self.cached(secret)
        if principal is not None:
            return principal
        flight = hash_key(secret) if secret is not None else ""
        pending = self._in_flight.get(flight)
        if pending is None:
            pending = asyncio.ensure_future(
                anyio.to_thread.run_sync(self.resolve, secret, limiter=limiter)
            )
            self._in_flight[flight] = pending
            pending.add_done_callback(lambda _: self._in_flight.pop(flight, None))
        # Shielded: a client that goes away must not cancel the lookup the others wait on.
        return await asyncio.shield(pending)

    def resolve(self, secret: str | None) -> Principal:
        """Look the key up in the database (thread pool), refresh the cache, answer."""
        now = time.monotonic()
        with self.sessions() as session:
            keys_on = keys_configured(session)
            with self._lock:
                self._keys_on = (keys_on, now + self.settings.auth_cache_s)
            if not keys_on:
                return LOCAL
            if secret is None:
                raise missing_key()
            digest = hash_key(secret)
            principal = self._lookup(session, secret)
        with self._lock:
            if principal is None:
                self._valid.pop(digest, None)
                self._unknown[digest] = True
            else:
                self._unknown.pop(digest, None)
                self._valid[digest] = principal
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

    async def check_rate(self, principal: Principal) -> None:
        """429 ``rate_limited`` with ``Retry-After`` (whole seconds, at least 1) over the key's
        request rate; local mode is not limited."""
        if principal.key_id is None:
            return
        wait = await self.limiter.take(principal.key_id, principal.requests_per_minute)
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
            self._valid.clear()
            self._unknown.clear()
