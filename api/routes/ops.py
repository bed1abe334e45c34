"""Operations: liveness, readiness (database, object store, broker) and Prometheus metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import AppContext
from api.errors import ApiError
from api.schemas import Health, Ready, problem_responses
from cake_shared import workers

log = logging.getLogger("cake.api")
router = APIRouter(tags=["operations"])

CHECK_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=Health, summary="Liveness: the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, fn: Callable[[], Any]) -> str:
    """'ok', or a short reason (never a trace); each check is bounded by a timeout."""
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g} s"
    except ImportError:  # the broker's client library (Celery) cannot be loaded
        return "not configured (queue module unavailable)"
    except Exception as exc:
        log.warning("readiness check %s failed: %s", name, exc)
        return f"unavailable ({type(exc).__name__})"
    return "ok"


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness: database, object store and broker answer; live workers per queue",
    responses=problem_responses(503),
)
async def readyz(request: Request) -> dict[str, Any]:
    ctx: AppContext = request.app.state.ctx

    def database() -> None:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    checks = {
        "database": await _check("database", database),
        "store": await _check("store", ctx.store.ping),
        "broker": await _check("broker", ctx.queue.ping),
    }
    failing = [f"{name}: {state}" for name, state in checks.items() if state != "ok"]
    if failing:
        raise ApiError(
            503, "not_ready", "not ready: " + "; ".join(failing), extra={"checks": checks}
        )
    body: dict[str, Any] = {"status": "ready", "checks": checks}
    report = await _workers_report(ctx)
    if report is not None:
        body["workers"] = report
    return body


async def _workers_report(ctx: AppContext) -> dict[str, Any] | None:
    """Live workers per queue and the queues missing one (None when it cannot be read)."""

    def read() -> dict[str, Any]:
        with ctx.sessionmaker() as session:
            return workers.report(session, ctx.settings)

    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            return await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
    except Exception as exc:
        log.warning("readiness: worker heartbeats unreadable: %s", type(exc).__name__)
        return None


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description=(
        "Text format: cake_http_requests_total and cake_http_request_duration_seconds by route "
        "template and status, cake_jobs by status, cake_queue_depth by queue, "
        "cake_job_phase_duration_seconds by phase, cake_live_workers by queue, "
        "cake_live_workers_by_device by device."
    ),
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    payload = await run_in_threadpool(generate_latest, registry)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
