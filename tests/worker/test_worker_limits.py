"""The running-jobs limit per tenant: a job over it waits, queued, and runs when a slot frees."""

from __future__ import annotations

from cake_shared import jobs
from cake_shared.status import JobStatus
from worker.runner import process_job


def test_a_job_over_the_running_limit_waits_then_runs(make_service, wine_teacher):
    service = make_service(CAKE_TENANT_MAX_RUNNING_JOBS="1")
    first, second = service.add_job(wine_teacher), service.add_job(wine_teacher)
    token = jobs.claim_job(service.ctx, first, "worker-a:1")
    assert token is not None

    depth = service.ctx.queue.depth("cpu")
    assert process_job(service.ctx, second, worker_id="worker-b:2") == "waiting"
    job = service.get_job(second)
    assert (job.status, job.attempts, job.claimed_by) == ("queued", 0, None)
    assert [e.type for e in service.events(second)].count("waiting") == 1
    assert service.ctx.queue.depth("cpu") == depth + 1  # published again, to be retried later
    # a duplicate message of the waiting job does not multiply the messages
    assert process_job(service.ctx, second, worker_id="worker-b:2") == "waiting"
    assert service.ctx.queue.depth("cpu") == depth + 1
    assert [e.type for e in service.events(second)].count("waiting") == 1

    assert jobs.finish_job(service.ctx, first, token, JobStatus.SUCCEEDED, metrics={})
    assert process_job(service.ctx, second, worker_id="worker-b:2") == "succeeded"
    assert service.get_job(second).attempts == 1


def test_zero_means_no_running_limit(make_service, wine_teacher):
    service = make_service(CAKE_TENANT_MAX_RUNNING_JOBS="0")
    ids = [service.add_job(wine_teacher) for _ in range(3)]
    tokens = [jobs.claim_job(service.ctx, job_id, f"worker-{i}:1") for i, job_id in enumerate(ids)]
    assert all(tokens)
