"""The Celery app of the worker, with the ``cake.run_job`` task registered.

Start a worker with ``celery -A worker.app worker -Q cpu,gpu`` or ``cake worker``. The task
only carries a job id; :func:`worker.runner.process_job` does the work.

At shutdown (the first SIGTERM or Ctrl-C) the running job is handed back to the queue at its
next step with its checkpoints kept, so it resumes on the next start rather than holding the
shutdown up for the rest of the job. That works for the ``solo`` pool, where the job runs in
the process that gets the signal; a ``prefork`` child finishes its job first (warm shutdown).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from celery import signals
from celery.exceptions import Reject

from cake_shared import workers
from cake_shared.queue import TASK_NAME, celery_app
from cake_shared.queue_names import QUEUES
from worker.runner import process_job
from worker.sweeper import Sweeper
from worker.webhooks import WebhookDeliverer

app = celery_app()

#: Set when the worker begins to shut down; the running job then stops at its next step.
SHUTDOWN = threading.Event()
_sweeper = Sweeper()
_webhooks = WebhookDeliverer()


@app.task(name=TASK_NAME, ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: str) -> str:
    """Run one job (claim first, so a duplicate message does nothing).

    A message taken while the worker is already shutting down goes back to the broker
    untouched, for the next worker to take.
    """
    if SHUTDOWN.is_set():
        raise Reject("worker shutting down", requeue=True)
    return process_job(job_id, shutdown=SHUTDOWN)


def _consumer_queues(consumer: Any) -> list[str]:
    """The queues this worker consumes (``-Q``), in a stable order."""
    try:
        names = list(consumer.app.amqp.queues.consume_from)
    except Exception:
        names = []
    return sorted(names or QUEUES)


@signals.worker_init.connect
def _refuse_a_database_of_another_schema(**_: Any) -> None:
    """A worker started as ``celery -A worker.app worker`` checks the schema as ``cake worker``
    does: no schema or another migration is one line on stderr and exit code 2, not a worker
    that warns in a loop. (A database that cannot be reached yet is left to the retries.)"""
    from cake_cli.service import database_revisions, schema_problem
    from cake_shared.settings import get_settings

    url = get_settings().resolved_database_url()
    try:
        current, head = database_revisions(url)
    except Exception:
        return
    problem = schema_problem(current, head, url)
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        sys.stderr.flush()
        os._exit(2)


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    # ``cake worker`` started the heartbeat already (before torch was imported); a worker
    # started as ``celery -A worker.app worker`` starts it here.
    hostname = getattr(sender, "hostname", None) or workers.worker_name()
    concurrency = getattr(getattr(sender, "controller", None), "concurrency", None) or 1
    workers.start_heartbeat(hostname, _consumer_queues(sender), int(concurrency))
    _sweeper.start()
    _webhooks.start()


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    SHUTDOWN.set()
    # From now on this worker takes no job: it no longer counts as serving its queues. (This
    # runs in a signal handler: the heartbeat's own thread removes the row.)
    workers.stop_heartbeat(wait=False)


@signals.worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    workers.stop_heartbeat()
    _sweeper.stop()
    _webhooks.stop()


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A prefork child must not reuse database connections inherited from its parent."""
    from cake_shared.db import get_engine

    get_engine().dispose(close=False)
