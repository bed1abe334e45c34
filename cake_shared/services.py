"""What a process's code needs from its settings, built once at its entry point.

``create_app(settings)`` (the API), ``create_worker_app`` (a worker) and each ``cake`` command
build one :class:`Services` from the :class:`~cake_shared.settings.Settings` they read, and
hand it to everything below them: the job state machine (:mod:`cake_shared.jobs`), webhooks,
heartbeats, the runner and the sweeper take it as their first argument. Nothing reads settings,
an engine or a broker from a module-level cache, so what a function touches is what its caller
passed: two apps with different databases or brokers in one process each use their own, and a
test builds the services it needs instead of clearing caches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cake_shared import db
from cake_shared.settings import Settings
from cake_shared.storage import ObjectStore, Retry, retry_from_settings, store_from_settings

T = TypeVar("T")


class JobQueue(Protocol):
    """Where job ids are published for the workers; :class:`cake_shared.queue.CeleryQueue`
    in the service, an in-memory stand-in in tests of the code above the broker."""

    def enqueue(self, job_id: str, queue: str, countdown: float | None = None) -> None:
        """Publish ``job_id`` to ``queue`` (to be run in ``countdown`` s); raise on failure."""

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the broker answers within about ``timeout`` seconds."""

    def depth(self, queue: str) -> int:
        """Messages waiting in ``queue``."""

    def close(self) -> None:
        """Release broker connections."""


@dataclass
class Services:
    """One process's settings and what is built from them: the database engine and its session
    factory, the object store (with the process's retry budget, ``store_retry``) and the job
    queue."""

    settings: Settings
    engine: Engine
    sessionmaker: sessionmaker[Session]
    store: ObjectStore
    queue: JobQueue
    #: How patiently ``store`` rides out an outage; kept so that :meth:`after_fork` builds
    #: the child's store with the same budget.
    store_retry: Retry | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, queue: JobQueue | None = None, store_retry: Retry | None = None
    ) -> Self:
        """Build everything from ``settings``; ``queue`` defaults to the Celery broker of the
        settings (built lazily: no broker is contacted and Celery is not imported here),
        ``store_retry`` to the workers' long store budget (``CAKE_STORE_RETRY_*``; the API
        passes its short one, :func:`cake_shared.storage.api_retry_from_settings`)."""
        engine = db.make_engine(settings.resolved_database_url(), settings.db_connect_timeout_s)
        if queue is None:
            from cake_shared.queue import CeleryQueue

            queue = CeleryQueue(settings)
        store_retry = store_retry or retry_from_settings(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker(bind=engine, expire_on_commit=False),
            store=store_from_settings(settings, store_retry),
            queue=queue,
            store_retry=store_retry,
        )

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with db.session_scope(self.sessionmaker) as session:
            yield session

    def retrying(
        self,
        what: str,
        call: Callable[[], T],
        *,
        attempts: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """:func:`cake_shared.db.retrying` with these settings' retry policy."""
        return db.retrying(what, call, self.settings, attempts=attempts, sleep=sleep)

    def after_fork(self) -> None:
        """In a forked child (a prefork pool process): drop the parent's pooled database
        connections without closing them under the parent, and build a store of its own
        (an S3 client must not be shared across processes)."""
        self.engine.dispose(close=False)
        self.store = store_from_settings(self.settings, self.store_retry)

    def close(self) -> None:
        """Close pooled database and broker connections."""
        self.engine.dispose()
        self.queue.close()
