"""FastAPI dependencies: the app's context (settings, database, store), sessions, the tenant.

Everything a request needs hangs off ``app.state.ctx`` (built by ``create_app``), not module
globals, so tests can run several apps with different settings in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cake_shared.models import LOCAL_TENANT
from cake_shared.settings import Settings
from cake_shared.storage import ObjectStore


@dataclass
class AppContext:
    """Per-app state. ``sse_*`` are attributes so tests can shorten them."""

    settings: Settings
    engine: Engine
    sessionmaker: sessionmaker[Session]
    store: ObjectStore
    sse_poll_s: float = 0.5
    sse_heartbeat_s: float = 10.0

    @property
    def upload_dir(self) -> Path:
        return (self.settings.data_dir / "uploads").resolve()


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


CtxDep = Annotated[AppContext, Depends(get_ctx)]


def get_db(ctx: CtxDep) -> Iterator[Session]:
    """One session per request; rolled back if the handler did not commit."""
    session = ctx.sessionmaker()
    try:
        yield session
    finally:
        session.close()


def current_tenant(request: Request) -> str:
    """The tenant the request acts for.

    Single-user local mode for now: every request is tenant ``local``. API keys
    (``Authorization: Bearer``) will resolve to their tenant here, and every query already
    filters by this value, so other tenants' objects answer 404.
    """
    return LOCAL_TENANT


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
