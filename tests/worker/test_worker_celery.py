"""A real Celery worker process, on the embedded filesystem broker and on Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_support import empty_redis_databases
from worker_support import CeleryWorker, Service, wait_for

JOB_TIMEOUT_S = 120  # includes the worker's start-up (importing torch) on a loaded machine


@pytest.fixture
def redis_url() -> Iterator[str]:
    """An empty Redis database of its own on the local server, flushed afterwards."""
    with empty_redis_databases(1) as (url,):
        yield url


def _run_jobs_through_celery(service: Service, teacher, worker: CeleryWorker) -> None:
    queue = service.ctx.queue
    queue.ping()
    first = service.add_job(teacher, queue="cpu")
    second = service.add_job(teacher, queue="gpu")
    queue.enqueue(first, "cpu")
    queue.enqueue(first, "cpu")  # a duplicate message (redelivery) must not run the job twice
    queue.enqueue(second, "gpu")

    def finished(job_id: str) -> bool:
        assert worker.proc.poll() is None, worker.log()[-4000:]
        return service.get_job(job_id).status in ("succeeded", "failed", "canceled")

    wait_for(lambda: finished(first), JOB_TIMEOUT_S, f"{first} to finish")
    # The worker takes messages in order, one at a time: once the second job is done, the
    # duplicate (published before it) has been handled too.
    wait_for(lambda: finished(second), JOB_TIMEOUT_S, f"{second} to finish")
    for job_id in (first, second):
        job = service.get_job(job_id)
        assert job.status == "succeeded", (job.error, worker.log()[-4000:])
        assert job.attempts == 1
        assert [e.type for e in service.events(job_id)].count("started") == 1
        assert service.store.exists(f"jobs/{job_id}/attempts/1/artifacts/student.pt")


def test_celery_worker_on_the_embedded_filesystem_broker(tmp_path, service, wine_teacher):
    worker = CeleryWorker({"CAKE_DATA_DIR": str(service.data_dir)}, tmp_path / "worker.log")
    try:
        _run_jobs_through_celery(service, wine_teacher, worker)
    finally:
        worker.stop()
    assert "cake.run_job" in worker.log()


def test_celery_worker_on_redis_and_postgresql(
    tmp_path, make_service, wine_teacher, redis_url, postgres_url
):
    """The split deployment's broker and database (the store stays local here)."""
    service = make_service(CAKE_BROKER_URL=redis_url, CAKE_DATABASE_URL=postgres_url)
    worker = CeleryWorker(
        {
            "CAKE_DATA_DIR": str(service.data_dir),
            "CAKE_BROKER_URL": redis_url,
            "CAKE_DATABASE_URL": postgres_url,
        },
        tmp_path / "worker.log",
    )
    try:
        _run_jobs_through_celery(service, wine_teacher, worker)
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log()[-4000:]
