"""The API's two touch points with the queue, imported lazily.

``cake_shared.queue`` (Celery) is the worker side's module; importing it only when a job is
enqueued or readiness is checked keeps Celery's import cost off the API's start-up and lets tests
substitute an in-process fake for the broker call alone.
"""

from __future__ import annotations


def enqueue(job_id: str, queue: str) -> None:
    """Send the job id to the workers' queue ("gpu" or "cpu"); raises if the broker fails."""
    from cake_shared.queue import enqueue_job

    enqueue_job(job_id, queue)


def ping() -> None:
    """Raise unless the broker answers (a missing queue module counts as not ready).

    ``ping_broker`` reports a broker that does not answer by raising (connection refused,
    timeout, a missing folder of the filesystem broker); it returns nothing to test.
    """
    from cake_shared.queue import ping_broker

    ping_broker()
