"""Run one job: claim it, fetch its inputs, run the engine, record every step, upload results.

:func:`process_job` is what the Celery task calls, and what tests call in-process, with the
worker's :class:`~cake_shared.services.Services` (settings, database, store, queue). It claims
the job in the database first (a redelivered message for a job another live worker runs, or for
a finished or canceled job, does nothing), then runs :func:`cake_core.pipeline.run_job`
(in a sandboxed child process, :mod:`worker.engine_sandbox`, that reports back through this one)
with:

- ``on_progress`` writing phase and progress to the database (phase changes at once, otherwise
  at most every ``progress_interval_s``) and an event for each phase change, synthesis chunk,
  training epoch and the evaluation;
- ``should_cancel`` reading the cancel flag (about twice a second), and also saying stop when
  the worker shuts down or has lost its claim;
- checkpoints in the object store, so a later attempt resumes where this one stopped.

A background thread heartbeats the job (and flushes throttled progress) while it runs, so the
sweeper can tell a live job from one whose worker died: :class:`worker.tracker.JobTracker`. The
job's inputs and artifacts move between the object store and its work folder in
:mod:`worker.job_files`.

Outcomes: success -> artifacts uploaded (and logged to MLflow when configured:
:mod:`worker.mlflow_log`) and recorded, ``succeeded``; a
:class:`~cake_core.errors.CakeError` (bad teacher, spec, data set; divergence) -> ``failed``
with its code and message; a cancel -> ``canceled``; worker shutdown -> handed back to the queue
(the attempt is not counted); anything else -> retried while attempts remain, then ``failed``
with code ``internal`` and a message that leaks no paths or traces (those go to the worker log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cake_core.device import Runtime, default_runtime
from cake_core.errors import CakeError, JobCanceled
from cake_shared import jobs
from cake_shared.services import Services
from cake_shared.status import JobStatus
from cake_shared.storage import ObjectStore
from worker.checkpoints import ObjectStoreCheckpoints
from worker.engine_sandbox import run_engine
from worker.job_files import (
    ARTIFACT_CONTENT_TYPES,
    clear_checkpoints,
    discard_artifacts,
    fetch_inputs,
    load_inputs,
    upload_artifacts,
)
from worker.mlflow_log import log_job as log_to_mlflow
from worker.tracker import (
    CANCEL_CHECK_S,
    HEARTBEAT_S,
    MAX_BUFFERED_EVENTS,
    JobTracker,
    ShutdownFlag,
    describe_metrics,
)

__all__ = [
    "ARTIFACT_CONTENT_TYPES",
    "CANCEL_CHECK_S",
    "HEARTBEAT_S",
    "MAX_BUFFERED_EVENTS",
    "SLOT_WAIT_S",
    "JobTracker",
    "claim_is_dead",
    "process_job",
    "worker_identity",
]

log = logging.getLogger("cake.worker")


def worker_identity() -> str:
    """``host:pid``: the sweeper uses it to recognise claims of dead processes on this host."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_is_dead(claimed_by: str) -> bool:
    """True when ``claimed_by`` names a process on this host that no longer exists.

    Lets a restarted embedded worker hand back the job its predecessor was running at once
    instead of after the heartbeat timeout. Anything else (another host, a live or reused pid)
    is left to the heartbeat timeout.
    """
    host, _, pid_text = claimed_by.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


#: How long a job whose tenant is at its running-jobs limit waits before it asks again.
SLOT_WAIT_S = 5.0


def _wait_for_slot(services: Services, job_id: str) -> None:
    """Publish the job again to be retried in ``SLOT_WAIT_S``: it stays queued, never dropped
    (were the publish lost, the sweeper publishes queued jobs the broker no longer holds)."""
    if jobs.defer_job(services, job_id, SLOT_WAIT_S):
        log.info(
            "job %s: its tenant is at its running-jobs limit; retry in %g s", job_id, SLOT_WAIT_S
        )
    else:
        log.info("job %s: waits for a slot of its tenant (already rescheduled)", job_id)


def process_job(
    services: Services,
    job_id: str,
    *,
    worker_id: str | None = None,
    shutdown: ShutdownFlag | None = None,
    runtime: Runtime | None = None,
    store: ObjectStore | None = None,
) -> str:
    """Run ``job_id`` if this worker can claim it; returns what happened.

    One of ``skipped`` (not claimable), ``waiting`` (its tenant is at its running-jobs limit;
    published again for later), ``succeeded``, ``failed``, ``canceled``, ``requeued``
    (handed back for a retry or at shutdown) or ``lost`` (another worker took the job over).

    ``services`` are the worker's settings, database, store and queue; ``runtime`` (default:
    ``CAKE_WORKER_DEVICE``, else CUDA when present) and ``store`` (default:
    ``services.store``) may be given by the caller.
    """
    settings = services.settings
    worker_id = worker_id or worker_identity()
    try:
        token = services.retrying(
            f"claim of job {job_id}", lambda: jobs.claim_job(services, job_id, worker_id)
        )
    except jobs.TenantAtCapacity:
        _wait_for_slot(services, job_id)
        return "waiting"
    if token is None:
        log.info("job %s: not claimable (running elsewhere, finished or unknown); skipped", job_id)
        return "skipped"
    inputs = services.retrying(f"start of job {job_id}", lambda: load_inputs(services, job_id))
    if inputs is None:  # deleted between claim and load
        return "skipped"
    tracker = JobTracker(
        services,
        job_id,
        token,
        inputs.attempt,
        interval_s=settings.progress_interval_s,
        shutdown=shutdown,
    )
    if inputs.cancel_requested:
        _finish(
            services, job_id, token, JobStatus.CANCELED, message="job canceled before it started"
        )
        return JobStatus.CANCELED

    work = Path(tempfile.mkdtemp(prefix=f"cake-{job_id}-"))
    checkpoints: ObjectStoreCheckpoints | None = None
    try:
        runtime = runtime or default_runtime(settings.worker_device)
        store = store or services.store
        checkpoints = ObjectStoreCheckpoints(
            store, job_id, attempt=inputs.attempt, scratch=work, guard=tracker.owns
        )
        tracker.event(
            "started",
            f"attempt {inputs.attempt} started on {worker_id} ({runtime.device})",
            worker=worker_id,
            device=str(runtime.device),
        )
        log.info("job %s: attempt %d on %s", job_id, inputs.attempt, runtime.device)
        with tracker:
            teacher_path, eval_path = fetch_inputs(store, inputs, work)
            saved = checkpoints.keys()
            if saved:
                chunks = sum(1 for k in saved if k.startswith("synthesis/"))
                tracker.event(
                    "resumed",
                    f"resuming from checkpoints: {chunks} synthesis chunk(s)"
                    + (", training" if "training" in saved else ""),
                    synthesis_chunks=chunks,
                    training="training" in saved,
                )
            # In a sandboxed child (worker.engine_sandbox): the teacher is untrusted code.
            result = run_engine(
                settings,
                work,
                teacher_path,
                inputs.input_shape,
                inputs.spec,
                eval_path=eval_path,
                runtime=runtime,
                on_progress=tracker.on_progress,
                should_cancel=tracker.should_cancel,
                checkpoints=checkpoints,
                on_isolation=lambda network, files: _record_isolation(tracker, network, files),
            )
            # Last check before the results land: a worker that lost the job has no need to
            # upload, and a cancel that came during evaluation or export (after the pipeline's
            # last step) still ends the job canceled, as API.md promises. A worker that loses
            # the job right after this check uploads into its own attempt's folder, which no
            # row will point at (cake_shared.job_keys): the winner's files are never touched.
            if not tracker.owns() or tracker.stop_reason == "cancel":
                raise JobCanceled("claim lost or canceled")
            rows = upload_artifacts(store, job_id, inputs.attempt, result.artifacts)
            # Before the job is recorded succeeded, so a pipeline that waits for it (or for its
            # webhook) finds the MLflow run; never raises, and is bounded by
            # CAKE_MLFLOW_BUDGET_S: MLflow never decides a job's outcome (worker.mlflow_log).
            log_to_mlflow(services, job_id, result.artifacts, result.metrics, tracker.event)
        if not _finish(
            services,
            job_id,
            token,
            JobStatus.SUCCEEDED,
            metrics=result.metrics,
            artifacts=rows,
            student=asdict(result.spec.student),
            artifacts_attempt=inputs.attempt,
            message=f"job succeeded: {describe_metrics(result.metrics)}",
            data={"attempt": inputs.attempt, "artifacts": [r["name"] for r in rows]},
        ):
            discard_artifacts(store, rows)
            return _lost(job_id, "it finished, but another worker holds the job; result dropped")
        clear_checkpoints(checkpoints)
        log.info("job %s: succeeded", job_id)
        return JobStatus.SUCCEEDED
    except JobCanceled:
        return _stopped(services, job_id, token, tracker, checkpoints)
    except CakeError as exc:
        if tracker.stop_reason == "lost":
            return _lost(job_id, f"the engine stopped with {exc.code}")
        log.info("job %s: failed (%s): %s", job_id, exc.code, exc.message)
        _finish(
            services,
            job_id,
            token,
            JobStatus.FAILED,
            error={"code": exc.code, "message": exc.message},
            data={"attempt": inputs.attempt, "phase": tracker.phase, "code": exc.code},
        )
        clear_checkpoints(checkpoints)
        return JobStatus.FAILED
    except Exception:
        log.exception("job %s: internal error in attempt %d", job_id, inputs.attempt)
        if tracker.stop_reason == "lost":
            return _lost(job_id, "after the internal error above")
        if inputs.attempt < settings.job_max_attempts:
            _requeue(
                services,
                job_id,
                token,
                reason=f"internal error in attempt {inputs.attempt} of "
                f"{settings.job_max_attempts}; the job will be retried",
                data={"attempt": inputs.attempt},
            )
            return "requeued"
        _finish(
            services,
            job_id,
            token,
            JobStatus.FAILED,
            error={
                "code": "internal",
                "message": f"the job failed {inputs.attempt} times because of an internal error "
                "in the worker; the service operator can find the details in the worker log",
            },
            data={"attempt": inputs.attempt, "phase": tracker.phase},
        )
        clear_checkpoints(checkpoints)
        return JobStatus.FAILED
    except BaseException:
        # Cold shutdown or interpreter exit in the middle of a job: hand it back if we still
        # can, so it resumes on the next start instead of waiting for the heartbeat timeout.
        with contextlib.suppress(Exception):
            jobs.requeue_job(
                services,
                job_id,
                token,
                reason="worker stopped; job handed back",
                refund_attempt=True,
                level="info",
                data={"attempt": inputs.attempt},
            )
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _record_isolation(tracker: JobTracker, network: bool, filesystem: bool) -> None:
    """Say in the job's log when the kernel refused part of the engine's sandbox (an
    unprivileged container, an old kernel): the job still runs, with the rlimits and the clean
    environment, and the operator can see what it ran without."""
    if network and filesystem:
        log.info("job %s: engine sandboxed (no network, writes only in its folder)", tracker.job_id)
        return
    missing = [
        name
        for name, ok in (("network namespace", network), ("file-system confinement", filesystem))
        if not ok
    ]
    tracker.event(
        "sandbox",
        "the kernel refused the engine's " + " and ".join(missing) + "; the job runs without",
        level="warning",
        network_isolated=network,
        filesystem_isolated=filesystem,
    )


def _finish(services: Services, job_id: str, token: str, status: JobStatus, **details: Any) -> bool:
    """:func:`cake_shared.jobs.finish_job`, riding out a short database outage: the result of
    a whole job is not dropped for a connection that broke at the wrong moment."""
    return services.retrying(
        f"end of job {job_id}",
        lambda: jobs.finish_job(services, job_id, token, status, **details),
    )


def _requeue(services: Services, job_id: str, token: str, **details: Any) -> bool:
    """:func:`cake_shared.jobs.requeue_job` with the same patience as :func:`_finish`."""
    return services.retrying(
        f"hand-back of job {job_id}",
        lambda: jobs.requeue_job(services, job_id, token, **details),
    )


def _lost(job_id: str, how: str) -> str:
    """Every way an attempt ends after another worker took the job over says so in the same words
    in the log (an operator greps for "claim lost"), then ``lost``."""
    log.warning("job %s: claim lost to another worker; %s", job_id, how)
    return "lost"


def _stopped(
    services: Services,
    job_id: str,
    token: str,
    tracker: JobTracker,
    checkpoints: ObjectStoreCheckpoints | None,
) -> str:
    """The pipeline stopped on request: canceled by the user, worker shutdown, or claim lost."""
    if tracker.stop_reason == "lost":
        return _lost(job_id, "stopped")
    if tracker.stop_reason == "shutdown":
        jobs.requeue_job(
            services,
            job_id,
            token,
            reason="worker shutting down; the job goes back to the queue and resumes from its "
            "last checkpoint",
            refund_attempt=True,
            level="info",
            data={"attempt": tracker.attempt},
        )
        log.info("job %s: handed back at shutdown", job_id)
        return "requeued"
    _finish(
        services,
        job_id,
        token,
        JobStatus.CANCELED,
        message=f"job canceled during {tracker.phase or 'start-up'}",
        data={"attempt": tracker.attempt, "phase": tracker.phase},
    )
    clear_checkpoints(checkpoints)
    log.info("job %s: canceled", job_id)
    return JobStatus.CANCELED
