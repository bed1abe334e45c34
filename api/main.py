"""The FastAPI application factory.

``create_app(settings)`` builds everything a request needs from its settings (engine, session
factory, store, job queue, metrics: :class:`api.deps.AppContext`) and hangs it on
``app.state``, so several apps with different settings can coexist (tests), each publishing to
its own broker, and nothing is created at import time. Serve it with
``uvicorn --factory api.main:create_app`` (settings from ``CAKE_*`` variables).

The API process never imports torch: teacher checks and the architecture catalogue run in
sandboxed children (``api.sandbox``), which a background thread warms up at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api import catalog, sandbox, schemas
from api.deps import AppContext, current_principal
from api.errors import install_handlers, problem
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import (
    architectures,
    artifacts,
    dashboard,
    datasets,
    jobs,
    ops,
    teachers,
    webhooks,
)
from api.uploads import upload_owner
from cake_core import __version__
from cake_shared.db import is_unavailable
from cake_shared.services import JobQueue
from cake_shared.settings import Settings
from cake_shared.storage import api_retry_from_settings
from cake_shared.workers import WorkerWatch

log = logging.getLogger("cake.api")

DESCRIPTION = """\
Data-free knowledge distillation (CAKE) as a service: upload a TorchScript classifier, create a
job, poll it, download a smaller student. Errors are RFC 9457 problem documents
(`application/problem+json`) with a machine-readable `code`. Lists are newest first with
`limit` (1..100) and an `after` cursor. Creates accept an `Idempotency-Key` header.
"""

# Models the routes reference by hand (multipart forms, the dual-content job body).
_EXTRA_SCHEMAS: tuple[type[BaseModel], ...] = (
    schemas.JobCreate,
    schemas.OneShotJobForm,
    schemas.TeacherUploadForm,
    schemas.DatasetUploadForm,
    schemas.Problem,
)


def _warm_up() -> None:
    """Start the fork server and compute the catalogue before the first request needs them."""
    try:
        sandbox.warm_up()
        catalog.architectures()
    except Exception:
        log.warning("warm-up of the torch sandbox failed; it is retried on first use")


def _remove_stale_uploads(folder: Path, max_age_s: float = 24 * 3600) -> int:
    """Temporary upload files normally go with their request; a crash can leave some behind.

    At start-up, a file whose writer (named in it, ``api.uploads.upload_prefix``) was a process
    on this host that no longer runs goes at once: it can only be half of an upload that died
    with its API process (kill -9, out of memory, a power cut). So does one named after this
    very process (a container restarted with the same pid: nothing of ours is in flight yet).
    Files of live processes (other uvicorn workers sharing the folder) stay; files of other
    hosts or without an owner go after ``max_age_s``. Returns how many were removed.
    """
    cutoff = time.time() - max_age_s
    host = socket.gethostname()
    removed = 0
    for path in folder.glob("upload-*"):
        owner = upload_owner(path.name)
        with contextlib.suppress(OSError):
            if owner is not None and owner[0] == host:
                stale = owner[1] == os.getpid() or not _process_exists(owner[1])
            else:
                stale = path.stat().st_mtime < cutoff
            if stale:
                path.unlink()
                removed += 1
    if removed:
        log.info("removed %d temporary upload file(s) left by a stopped API process", removed)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    """A database that cannot be reached is a 503 the client may retry (``Retry-After``), not
    a 500: ``cake_client`` and well-behaved clients back off and come back. Other database
    errors stay 500s (logged, nothing of the internals in the answer)."""
    if not is_unavailable(exc):
        log.error("database error in %s %s", request.method, request.url.path, exc_info=exc)
        return problem(
            500,
            "internal",
            "an internal error occurred; the server log has the details",
            instance=request.url.path,
        )
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
    log.warning("database unavailable in %s %s: %s", request.method, request.url.path, reason)
    return problem(
        503,
        "not_ready",
        "the database is unavailable; try again shortly",
        instance=request.url.path,
        headers={"Retry-After": "2"},
    )


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in _EXTRA_SCHEMAS:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components.setdefault(model.__name__, schema)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None, *, queue: JobQueue | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to the ``CAKE_*`` environment (read here, once:
    this is the entry point of ``uvicorn --factory``), ``queue`` to the Celery broker of the
    settings (tests pass a stand-in)."""
    settings = settings or Settings()
    # The API's short store budget: a request answers 503 after a few seconds of outage
    # instead of holding its thread for the workers' minute.
    ctx = AppContext.from_settings(
        settings, queue=queue, store_retry=api_retry_from_settings(settings)
    )
    sessions = ctx.sessionmaker
    ctx.upload_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_uploads(ctx.upload_dir)

    # Jobs that stay queued while no live worker serves their queue get a no_worker event.
    watch = WorkerWatch(sessions, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=_warm_up, name="cake-warm-up", daemon=True).start()
        watch.start()
        yield
        watch.stop()
        ctx.close()

    app = FastAPI(
        title="cake-distill",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "teachers", "description": "Upload and manage teacher models."},
            {"name": "jobs", "description": "Distillation jobs, their state and log."},
            {"name": "artifacts", "description": "The outputs of a succeeded job."},
            {"name": "datasets", "description": "Evaluation data sets (reporting only)."},
            {"name": "catalogue", "description": "Student architectures."},
            {"name": "webhooks", "description": "Signing secret of job callbacks."},
            {"name": "operations", "description": "Health, readiness and metrics."},
        ],
    )
    metrics = ApiMetrics(sessions, settings)
    app.state.ctx = ctx
    app.state.metrics = metrics
    app.state.worker_watch = watch
    install_handlers(app)
    for database_error in (DBAPIError, PoolTimeout):
        app.add_exception_handler(database_error, _database_unavailable)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Every /v1 route needs a valid key once keys exist (api.auth); operations stay open. The
    # polling route checks it itself (no dependency solving per poll), and comes first.
    app.include_router(jobs.poll_router)
    for module in (teachers, jobs, artifacts, datasets, architectures, webhooks):
        app.include_router(module.router, dependencies=[Depends(current_principal)])
    app.include_router(ops.router)
    app.include_router(dashboard.router)  # public: the pages hold no data
    _install_openapi(app)
    return app
