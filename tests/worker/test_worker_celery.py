"""A real Celery worker process, on the embedded filesystem broker and on Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from worker_support import CeleryWorker, events, get_job, wait_for

from cake_shared.queue import enqueue_job, ping_broker

JOB_TIMEOUT_S = 120  # includes the worker's start-up (importing torch) on a loaded machine


@pytest.fixture
def redis_url() -> Iterator[str]:
    """An empty Redis database of its own on the local server, flushed afterwards."""
    redis = pytest.importorskip("redis")
    client = None
    for db in range(15, 0, -1):
        candidate = redis.Redis(host="127.0.0.1", port=6379, db=db, socket_connect_timeout=2)
        try:
            if candidate.dbsize() == 0:
                client = candidate
                break
        except redis.ConnectionError as exc:
            pytest.skip(f"Redis is not running on 127.0.0.1:6379: {exc}")
    if client is None:
        pytest.skip("no empty Redis database to use")
    url = f"redis://127.0.0.1:6379/{client.connection_pool.connection_kwargs['db']}"
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def _run_jobs_through_celery(service, teacher, worker: CeleryWorker) -> None:
    ping_broker()
    first = service.add_job(teacher, queue="cpu")
    second = service.add_job(teacher, queue="gpu")
    enqueue_job(first, "cpu")
    enqueue_job(first, "cpu")  # a duplicate message (redelivery) must not run the job twice
    enqueue_job(second, "gpu")

    def finished(job_id: str) -> bool:
        assert worker.proc.poll() is None, worker.log()[-4000:]
        return get_job(job_id).status in ("succeeded", "failed", "canceled")

    wait_for(lambda: finished(first), JOB_TIMEOUT_S, f"{first} to finish")
    # The worker takes messages in order, one at a time: once the second job is done, the
    # duplicate (published before it) has been handled too.
    wait_for(lambda: finished(second), JOB_TIMEOUT_S, f"{second} to finish")
    for job_id in (first, second):
        job = get_job(job_id)
        assert job.status == "succeeded", (job.error, worker.log()[-4000:])
        assert job.attempts == 1
        assert [e.type for e in events(job_id)].count("started") == 1
        assert service.store.exists(f"jobs/{job_id}/artifacts/student.pt")


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
