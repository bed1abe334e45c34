"""FastAPI dependencies: the app's context (settings, database, store, queue), sessions, the
tenant.

Everything a request needs hangs off ``app.state.ctx`` (built by ``create_app`` from its
settings), not module globals, so tests can run several apps with different settings (another
database, another broker) in one process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.auth import Authenticator, Principal
from api.job_bodies import JobBodies
from api.job_watch import JobWatch, read_stamps
from cake_shared.services import Services

T = TypeVar("T")


@dataclass
class AppContext(Services):
    """Per-app state: the app's :class:`~cake_shared.services.Services` (settings, engine,
    session factory, store, job queue; ``AppContext.from_settings`` builds them) and what only
    the API needs. ``sse_*`` are attributes so tests can shorten them."""

    sse_poll_s: float = 0.5
    sse_heartbeat_s: float = 10.0
    #: Requests that may hold a session from ``get_db`` at once, and threads that may run
    #: short reads with a session of their own (``db_limiter``): the pool's ``pool_size`` (10),
    #: so that none waits on the pool and none opens an overflow connection that is closed
    #: again on return (under load that was a PostgreSQL connect per request).
    db_slots: int = 10
    auth: Authenticator = field(init=False)
    #: The process's long-poll watcher; ``job_watch.poll_s`` is its round on SQLite (0.25 s).
    job_watch: JobWatch = field(init=False)
    #: The last body of ``GET /v1/jobs/{id}`` per job, while the job is unchanged.
    job_bodies: JobBodies = field(default_factory=JobBodies)
    _db_slots: anyio.Semaphore | None = field(default=None, repr=False)
    _db_limiter: anyio.CapacityLimiter | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.settings, self.sessionmaker)
        postgres = self.engine.dialect.name == "postgresql"
        self.job_watch = JobWatch(
            partial(read_stamps, self.engine),
            limiter=self.db_limiter,
            listen_url=self.settings.resolved_database_url() if postgres else None,
        )

    def close(self) -> None:
        self.job_watch.close()
        super().close()

    def db_semaphore(self) -> anyio.Semaphore:
        if self._db_slots is None:
            self._db_slots = anyio.Semaphore(self.db_slots)
        return self._db_slots

    async def short_read(self, read: Callable[..., T], *args: Any) -> T:
        """``read(*args)``: a read of a few rows in a session of its own, for the polling path.

        On SQLite it runs right here on the event loop: an indexed read of a local file takes
        tens of microseconds and, in WAL mode, never waits for a writer, while the hop to a
        worker thread and back cost more than the read itself and, under a burst, queued every
        poll behind the GIL twice. Other databases answer over the network: their reads go to
        a worker thread (``db_limiter``), so that a slow server never stalls the loop.
        """
        if self.engine.dialect.name == "sqlite":
            return read(*args)
        return await anyio.to_thread.run_sync(read, *args, limiter=self.db_limiter())

    def db_limiter(self) -> anyio.CapacityLimiter:
        """Threads for short reads that open and close their own session: no more at once
        than the pool keeps connections, so none waits on the pool or opens a throw-away one."""
        if self._db_limiter is None:
            self._db_limiter = anyio.CapacityLimiter(self.db_slots)
        return self._db_limiter

    @property
    def upload_dir(self) -> Path:
        return (self.settings.data_dir / "uploads").resolve()


bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An API key (`cake keys create --tenant NAME`); not needed in local mode.",
)


async def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


async def get_db(ctx: CtxDep) -> AsyncIterator[Session]:
    """One session per request; rolled back if the handler did not commit.

    A request holds its session, and after its first query a pooled connection, across several
    thread-pool hops (the endpoint, then response validation). Without a limit, a burst of more
    requests than the pool has connections fills every thread-pool token with endpoints blocked
    on the pool while the holders wait for a token to finish: a deadlock until the pool times
    out (30 s, then 500s). The slot is taken in the event loop, so waiting holds no thread.
    """
    async with ctx.db_semaphore():
        session = ctx.sessionmaker()
        try:
            yield session
        finally:
            # its own limiter: closing must never wait for a thread-pool token
            await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """Who the request acts for (see ``api.auth``); 401 without a valid key once keys exist,
    429 over the key's request rate. Cached answers cost no thread hop. (The context is read
    from the app, not asked for as a dependency: every request solves this one, and each
    dependency level costs FastAPI more than the cached lookup itself.)"""
    ctx: AppContext = request.app.state.ctx
    secret = credentials.credentials if credentials is not None else None
    principal = await ctx.auth.authenticate(secret, ctx.db_limiter())
    await ctx.auth.check_rate(principal)
    request.state.tenant = principal.tenant
    return principal


async def tenant_of(request: Request) -> str:
    """The tenant of a request whose route takes no dependencies (the polling path, which
    FastAPI's dependency solving cost a sixth of its CPU): the same bearer parsing and the same
    check as :func:`current_principal`."""
    return (await current_principal(request, await bearer_scheme(request))).tenant


async def current_tenant(principal: Annotated[Principal, Depends(current_principal)]) -> str:
    """The tenant the request acts for: every query filters by it, so other tenants' objects
    answer 404, exactly like unknown ids."""
    return principal.tenant


SessionDep = Annotated[Session, Depends(get_db)]
TenantDep = Annotated[str, Depends(current_tenant)]
IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description=(
            "Makes the create safe to retry: the same key with the same body returns the first "
            "result; with a different body, 409 conflict. Keys last 24 h."
        ),
    ),
]
