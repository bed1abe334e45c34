"""The FastAPI application factory.

``create_app(settings)`` builds everything a request needs (engine, session factory, store,
metrics) and hangs it on ``app.state``, so several apps with different settings can coexist
(tests) and nothing is created at import time. Serve it with
``uvicorn --factory api.main:create_app`` (settings from ``CAKE_*`` variables).

The API process never imports torch: teacher checks and the architecture catalogue run in
sandboxed children (``api.sandbox``), which a background thread warms up at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from sqlalchemy.orm import sessionmaker

from api import catalog, sandbox, schemas
from api.deps import AppContext
from api.errors import install_handlers
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import architectures, artifacts, datasets, jobs, ops, teachers
from cake_core import __version__
from cake_shared.db import make_engine
from cake_shared.settings import Settings
from cake_shared.storage import store_from_url

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


def _remove_stale_uploads(folder: Path, max_age_s: float = 24 * 3600) -> None:
    """Temporary upload files normally go with their request; a crash can leave some behind."""
    cutoff = time.time() - max_age_s
    for path in folder.glob("upload-*"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` defaults to the ``CAKE_*`` environment."""
    settings = settings or Settings()
    engine = make_engine(settings.resolved_database_url())
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    store = store_from_url(
        settings.resolved_store_url(), settings.s3_endpoint_url, settings.s3_region
    )
    ctx = AppContext(settings=settings, engine=engine, sessionmaker=sessions, store=store)
    ctx.upload_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_uploads(ctx.upload_dir)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=_warm_up, name="cake-warm-up", daemon=True).start()
        yield
        engine.dispose()

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
            {"name": "operations", "description": "Health, readiness and metrics."},
        ],
    )
    metrics = ApiMetrics(sessions)
    app.state.ctx = ctx
    app.state.metrics = metrics
    install_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for module in (teachers, jobs, artifacts, datasets, architectures, ops):
        app.include_router(module.router)
    _install_openapi(app)
    return app
