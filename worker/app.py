"""The Celery app of a worker, with the ``cake.run_job`` task registered.

Start a worker with ``celery -A worker.app worker -Q cpu,gpu`` or ``cake worker``. The task
only carries a job id; :func:`worker.runner.process_job` does the work.

:func:`create_worker_app` builds the app from the worker's
:class:`~cake_shared.services.Services`: ``cake worker`` passes the ones it built from its
settings; ``celery -A worker.app`` finds ``app`` here, built from the ``CAKE_*`` environment
when Celery first looks it up. Whatever runs in the worker (the task, the sweeper, the webhook
deliverer, the heartbeat) uses those services and nothing else.

At shutdown (the first SIGTERM or Ctrl-C) the running job is handed back to the queue at its
next step with its checkpoints kept, so it resumes on the next start rather than holding the
shutdown up for the rest of the job. With the ``solo`` pool the job runs in the process that
gets the signal; with ``prefork`` it runs in a pool child, which reads the shutdown flag the
main process sets from shared memory (:class:`SharedFlag`), so it stops at its next step too and
Celery's warm shutdown only waits for the hand-back. Either way the engine itself runs in a
sandboxed child of the process that runs the job (:mod:`worker.engine_sandbox`), which is told
to stop through its pipe.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import signals
from celery.exceptions import Reject

from cake_core.device import Runtime, default_runtime
from cake_shared import workers
from cake_shared.queue import TASK_NAME, CeleryQueue
from cake_shared.queue_names import QUEUES
from cake_shared.services import Services
from cake_shared.settings import Settings
from worker.runner import process_job
from worker.sweeper import Sweeper
from worker.webhooks import WebhookDeliverer

if TYPE_CHECKING:
    from celery import Celery


def _consumer_queues(consumer: Any) -> list[str]:
    """The queues this worker consumes (``-Q``), in a stable order."""
    try:
        names = list(consumer.app.amqp.queues.consume_from)
    except Exception:
        names = []
    return sorted(names or QUEUES)


class SharedFlag:
    """A flag in shared memory, made before the prefork pool forks its children: the main
    process sets it (in its signal handler, so lock-free), every child sees it. The same
    ``set``/``is_set`` as :class:`threading.Event`, which it replaces for the shutdown flag."""

    def __init__(self) -> None:
        self._value = multiprocessing.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._value.value = True

    def is_set(self) -> bool:
        return bool(self._value.value)


class WorkerProcess:
    """One worker process: its Celery app (the one of ``services.queue``) with the task
    registered, and what runs beside the task (sweeper, webhook deliverer, heartbeat), started
    and stopped by the worker's lifecycle signals.

    ``heartbeat`` is one ``cake worker`` started already (before torch was imported); without
    it one is started when the worker is ready.
    """

    def __init__(self, services: Services, heartbeat: workers.Heartbeat | None = None) -> None:
        if not isinstance(services.queue, CeleryQueue):
            raise TypeError("a worker consumes from Celery: services.queue must be a CeleryQueue")
        self.services = services
        self.app: Celery = services.queue.app
        self.heartbeat = heartbeat
        #: Set when the worker begins to shut down; the running job then stops at its next step,
        #: in this process (solo pool) or in a pool child (prefork).
        self.shutdown = SharedFlag()
        self.sweeper = Sweeper(services)
        self.webhooks = WebhookDeliverer(services)

        # shared=False: a shared task would also be added to every Celery app built later in
        # this process, bound to these services.
        @self.app.task(
            name=TASK_NAME, ignore_result=True, acks_late=True, reject_on_worker_lost=True,
            shared=False,
        )  # fmt: skip
        def run_job_task(job_id: str) -> str:
            """Run one job (claim first, so a duplicate message does nothing).

            A message taken while the worker is already shutting down goes back to the broker
            untouched, for the next worker to take.
            """
            if self.shutdown.is_set():
                raise Reject("worker shutting down", requeue=True)
            return process_job(self.services, job_id, shutdown=self.shutdown, runtime=self.runtime)

        # Celery's signals are process-wide: each handler first checks that the signal is about
        # this app where the signal says (weak=False: bound methods would be dropped at once).
        signals.worker_init.connect(self._refuse_a_database_of_another_schema, weak=False)
        signals.worker_ready.connect(self._start, weak=False)
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        signals.worker_shutdown.connect(self._stop, weak=False)
        signals.worker_process_init.connect(self._after_fork, weak=False)

    @cached_property
    def runtime(self) -> Runtime:
        """The device jobs run on (``CAKE_WORKER_DEVICE``, else CUDA when present), found once
        per process, at the first job."""
        return default_runtime(self.services.settings.worker_device)

    def _mine(self, sender: Any) -> bool:
        return getattr(sender, "app", None) is self.app

    def _refuse_a_database_of_another_schema(self, sender: Any = None, **_: Any) -> None:
        """A worker started as ``celery -A worker.app worker`` checks the schema as ``cake
        worker`` does: no schema or another migration is one line on stderr and exit code 2,
        not a worker that warns in a loop. (A database that cannot be reached yet is left to
        the retries.)"""
        if not self._mine(sender):
            return
        from cake_cli.service import database_revisions, schema_problem

        url = self.services.settings.resolved_database_url()
        try:
            current, head = database_revisions(url)
        except Exception:
            return
        problem = schema_problem(current, head, url)
        if problem is not None:
            sys.stderr.write(f"error: {problem}\n")
            sys.stderr.flush()
            os._exit(2)

    def _start(self, sender: Any = None, **_: Any) -> None:
        if not self._mine(sender):
            return
        if self.heartbeat is None:
            hostname = getattr(sender, "hostname", None) or workers.worker_name()
            concurrency = getattr(getattr(sender, "controller", None), "concurrency", None) or 1
            self.heartbeat = workers.Heartbeat(
                self.services, hostname, _consumer_queues(sender), int(concurrency)
            )
        self.heartbeat.start()
        self.sweeper.start()
        self.webhooks.start()

    def _on_shutting_down(self, **_: Any) -> None:
        # The signal names no app: a process runs one worker.
        self.shutdown.set()
        # From now on this worker takes no job: it no longer counts as serving its queues.
        # (This runs in a signal handler: the heartbeat's own thread removes the row.)
        if self.heartbeat is not None:
            self.heartbeat.stop(wait=False)

    def _stop(self, sender: Any = None, **_: Any) -> None:
        if not self._mine(sender):
            return
        if self.heartbeat is not None:
            self.heartbeat.stop()
        self.sweeper.stop()
        self.webhooks.stop()

    def _after_fork(self, **_: Any) -> None:
        """A prefork child must not reuse connections inherited from its parent."""
        self.services.after_fork()


def create_worker_app(services: Services, heartbeat: workers.Heartbeat | None = None) -> Celery:
    """The Celery app of a worker on ``services`` (see :class:`WorkerProcess`)."""
    return WorkerProcess(services, heartbeat).app


def __getattr__(name: str) -> Any:
    """``app`` for ``celery -A worker.app``: the Celery command line's entry point, so the
    settings are read from the ``CAKE_*`` environment here, once, at its first lookup, and the
    app is kept for Celery's later lookups. Nothing else reads it."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = create_worker_app(Services.from_settings(Settings()))
    globals()["app"] = app
    return app
