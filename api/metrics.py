"""Prometheus metrics: HTTP requests by route template and status, and job state from the DB.

Request metrics are recorded by a pure ASGI middleware (``BaseHTTPMiddleware`` would buffer
streaming responses such as SSE and downloads). Route *templates* (``/v1/jobs/{id}``) label the
series, never raw paths, so cardinality stays bounded. Job gauges are computed at scrape time
from the database, which is the source of truth shared by every API replica and worker.
Each app has its own registry, so several apps can live in one process (tests).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cake_shared import workers
from cake_shared.models import Job, utcnow
from cake_shared.queue_names import QUEUES
from cake_shared.settings import Settings
from cake_shared.status import JobPhase, JobStatus

log = logging.getLogger("cake.api.metrics")

_PHASE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
_BATCH = 1000


class JobsCollector(Collector):
    """Jobs by status, queue depth, and phase durations of jobs finished since start-up.

    Phase durations come from the finished jobs themselves (``queued``: created -> started;
    ``running``: started -> finished; ``synthesizing``/``training``: the worker's
    ``synthesis_seconds``/``training_seconds`` metrics). Each scrape folds in the jobs finished
    since the previous one, so the histogram is a proper monotone counter per process.
    """

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.phase = Histogram(
            "cake_job_phase_duration_seconds",
            "Duration of job phases, for jobs finished since this process started",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=None,
        )
        self._watermark: datetime = utcnow() - timedelta(hours=1)
        self._seen_at_watermark: set[str] = set()

    def _fold_finished(self, session: Session) -> None:
        rows = session.execute(
            select(Job.id, Job.created_at, Job.started_at, Job.finished_at, Job.metrics)
            .where(Job.finished_at.is_not(None), Job.finished_at >= self._watermark)
            .order_by(Job.finished_at, Job.id)
            .limit(_BATCH + len(self._seen_at_watermark))
        ).all()
        for job_id, created, started, finished, metrics in rows:
            if job_id in self._seen_at_watermark:
                continue
            if started is not None:
                queued_s, running_s = started - created, finished - started
                self.phase.labels(JobStatus.QUEUED).observe(max(0.0, queued_s.total_seconds()))
                self.phase.labels(JobStatus.RUNNING).observe(max(0.0, running_s.total_seconds()))
            for phase, key in (
                (JobPhase.SYNTHESIZING, "synthesis_seconds"),
                (JobPhase.TRAINING, "training_seconds"),
            ):
                value = (metrics or {}).get(key)
                if isinstance(value, int | float) and value >= 0:
                    self.phase.labels(phase).observe(float(value))
            if finished > self._watermark:
                self._watermark = finished
                self._seen_at_watermark = set()
            self._seen_at_watermark.add(job_id)

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("cake_jobs", "Jobs by status (all tenants)", labels=["status"])
        depth = GaugeMetricFamily(
            "cake_queue_depth", "Jobs queued and not yet started, by queue", labels=["queue"]
        )
        try:
            with self.sessions() as session:
                counts = dict(
                    session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
                )
                queued = session.execute(
                    select(Job.queue, func.count())
                    .where(Job.status == JobStatus.QUEUED)
                    .group_by(Job.queue)
                ).all()
                self._fold_finished(session)
        except Exception:
            log.exception("job metrics could not be read from the database")
            return
        for status in JobStatus:
            jobs.add_metric([status.value], float(counts.get(status, 0)))
        by_queue = {**dict.fromkeys(QUEUES, 0), **{q: n for q, n in queued}}
        for queue, n in sorted(by_queue.items()):
            depth.add_metric([queue], float(n))
        yield jobs
        yield depth
        yield from self.phase.collect()
        yield from self._workers()

    def _workers(self) -> Iterator[Metric]:
        live = GaugeMetricFamily(
            "cake_live_workers",
            "Workers with a recent heartbeat, by queue they serve",
            labels=["queue"],
        )
        by_device = GaugeMetricFamily(
            "cake_live_workers_by_device",
            "Workers with a recent heartbeat, by device (cuda, cpu)",
            labels=["device"],
        )
        try:
            with self.sessions() as session:
                rows = workers.live_workers(session, self.settings)
        except Exception:
            log.exception("worker heartbeats could not be read from the database")
            return
        for queue, n in sorted(workers.workers_per_queue(rows).items()):
            live.add_metric([queue], float(n))
        devices = {"cpu": 0, "cuda": 0}
        for row in rows:
            devices[row.device] = devices.get(row.device, 0) + 1
        for device, n in sorted(devices.items()):
            by_device.add_metric([device], float(n))
        yield live
        yield by_device


class ApiMetrics:
    """The app's registry and its HTTP series."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cake_http_requests_total",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cake_http_request_duration_seconds",
            "HTTP request latency (until the response ends) by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(JobsCollector(sessions, settings))


class MetricsMiddleware:
    """Pure ASGI middleware timing every HTTP request until its response is complete."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
