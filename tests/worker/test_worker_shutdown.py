"""SIGTERM to a real Celery worker with the prefork pool: the running job is handed back at its
next step, as with the solo pool (``tests/faults`` covers solo), instead of the warm shutdown
waiting for the whole job."""

from __future__ import annotations

import signal
import subprocess

from worker_support import CeleryWorker, wait_for

#: Long enough that only a hand-back, not the end of the job, lets the worker exit in time.
SLOW_SPEC = {"synthesis": {"num_samples": 400, "steps": 100_000}, "training": {"epochs": 2}}


def test_sigterm_to_a_prefork_worker_hands_the_running_job_back(tmp_path, service, wine_teacher):
    worker = CeleryWorker(
        {"CAKE_DATA_DIR": str(service.data_dir)}, tmp_path / "worker.log", concurrency=2
    )
    try:
        job_id = service.add_job(wine_teacher, SLOW_SPEC)
        service.ctx.queue.enqueue(job_id, "cpu")
        wait_for(
            lambda: service.get_job(job_id).phase == "synthesizing" or worker.proc.poll(),
            180,
            "the job to start synthesizing",
        )
        assert worker.proc.poll() is None, worker.log()[-4000:]
        worker.proc.send_signal(signal.SIGTERM)
        try:
            code = worker.proc.wait(90)
        except subprocess.TimeoutExpired:
            raise AssertionError("the prefork worker waited for the job to finish") from None
    finally:
        worker.stop()
    assert code == 0, worker.log()[-4000:]
    job = service.get_job(job_id)
    assert (job.status, job.attempts, job.claim_token) == ("queued", 0, None), worker.log()[-4000:]
    last = service.events(job_id)[-1]
    assert last.type == "requeued" and "shutting down" in last.message
    assert service.ctx.queue.depth("cpu") == 1
