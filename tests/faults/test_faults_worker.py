"""Worker-process faults on real processes: ``cake worker`` killed (SIGKILL) in the middle of
synthesis and of training, killed again and again until the job runs out of attempts, stopped
(SIGTERM) in the middle of a job, two workers given the same job, cancels at every phase, and a
worker frozen (SIGSTOP) long enough to be given up on, then thawed (SIGCONT).

Everything runs as in the split deployment: ``cake serve --no-worker`` in front of PostgreSQL
(a fresh database for this module), a private ``redis-server`` as the broker and a local object
store; jobs go in through the REST API; the workers are ``cake worker`` processes (the solo pool
at concurrency 1, where the job runs in the worker process itself; prefork at 2, where it runs
in a pool child). What the tests assert is read from PostgreSQL (job rows and events) and from
``/proc``; each test prints one ``FIGURES`` line with what it saw (docs/RELIABILITY.md).

The teacher is the wine MLP (13 features, 3 classes): its synthesis chunks (one mini-batch of
99 samples each with ``chunk_batches`` 1) and its training epochs take a fraction of a second,
so a job has many checkpoints in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from faults_worker_support import (
    FINISHED,
    START_TIMEOUT_S,
    CakeProcess,
    Harness,
    PrivateRedis,
    chunks,
    descendants,
    epochs,
    expect,
    figures,
    free_port,
    in_process_services,
    service_env,
    wait_for,
)

from cake_client import Client

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
JOB_TIMEOUT_S = 120
#: Synthesis of 9 chunks (one mini-batch each) of a fraction of a second; two training epochs.
LONG_SYNTHESIS: dict[str, Any] = {
    "synthesis": {"num_samples": 800, "steps": 150, "chunk_batches": 1},
    "training": {"epochs": 2},
}
#: Quick synthesis (4 chunks), then 8 training epochs of a fraction of a second each (594
#: training samples: 33 full batches of 18).
LONG_TRAINING: dict[str, Any] = {
    "synthesis": {"num_samples": 600, "steps": 20, "chunk_batches": 2},
    "training": {"epochs": 8, "batch_size": 18},
}
TINY: dict[str, Any] = {"synthesis": {"num_samples": 200, "steps": 5}, "training": {"epochs": 1}}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, wine_teacher: Any) -> Iterator[Harness]:
    """PostgreSQL (a fresh database), a private Redis, a local store, ``cake db upgrade`` and
    ``cake serve --no-worker``, with the wine teacher uploaded; no worker yet."""
    root = tmp_path_factory.mktemp("faults-worker")
    name = f"cake_faults_worker_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database_url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    redis = PrivateRedis(root / "redis.log")
    env = service_env(
        CAKE_DATA_DIR=str(root / "data"),
        CAKE_DATABASE_URL=database_url,
        CAKE_BROKER_URL=redis.url,
        CAKE_STORE_URL=f"file://{root / 'store'}",
    )
    api = client = None
    harness = None
    try:
        migrate = subprocess.run(
            [sys.executable, "-m", "cake_cli.main", "db", "upgrade"],
            env=env, cwd=str(root), capture_output=True, text=True, timeout=START_TIMEOUT_S,
        )  # fmt: skip
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        port = free_port()
        api = CakeProcess(
            ["serve", "--no-worker", "--port", str(port)], env, root / "api.log", root
        )
        api.wait_http(f"http://127.0.0.1:{port}/readyz", START_TIMEOUT_S)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        harness = Harness(root, database_url, redis, env, client, api)
        with open(wine_teacher.path, "rb") as fh:
            harness.teacher_id = expect(
                client.post(
                    "/v1/teachers",
                    files={"file": ("wine.pt", fh, "application/octet-stream")},
                    data={"input_shape": json.dumps(list(wine_teacher.input_shape))},
                ),
                201,
            )["id"]
        yield harness
    finally:
        if harness is not None:
            harness.stop_workers()
        if client is not None:
            client.close()
        if api is not None:
            api.stop()
        redis.stop()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def h(harness: Harness) -> Iterator[Harness]:
    """The module's deployment; this test's workers are ended afterwards, and jobs it left
    unfinished are marked canceled so that no later test's worker runs them."""
    try:
        yield harness
    finally:
        harness.stop_workers()
        with psycopg.connect(harness.database_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE jobs SET status = 'canceled', phase = 'canceled', claim_token = NULL "
                "WHERE status IN ('queued', 'running')"
            )


def succeeded(h: Harness, job_id: str) -> dict[str, Any]:
    row = h.wait_job(job_id, lambda r: r["status"] in FINISHED, JOB_TIMEOUT_S, "to finish")
    assert row["status"] == "succeeded", (row["error"], h.logs())
    return row


# -- 1. SIGKILL during synthesis -----------------------------------------------------------------
def test_kill9_during_synthesis_resumes_from_the_last_chunk(h: Harness) -> None:
    """The worker running the job dies without a word (SIGKILL, solo pool: the job runs in the
    worker process itself). The other worker's sweeper sees that the claiming process is gone,
    requeues the job, and the job resumes from its checkpointed chunks: the second attempt
    computes only the chunks the first did not finish."""
    workers = h.start_workers("w1", "w2")
    job_id = h.submit(LONG_SYNTHESIS)
    h.wait_events(job_id, lambda ev: len(chunks(ev, 1)) >= 2, JOB_TIMEOUT_S, "to finish 2 chunks")
    victim, pid = h.owner(job_id, workers)
    killed = victim.kill9()
    assert pid in killed
    before = chunks(h.events(job_id), 1)

    row = succeeded(h, job_id)
    survivor = next(w for w in workers if w is not victim)
    assert survivor.proc.poll() is None
    events = h.events(job_id)
    types = [e["type"] for e in events]
    total = max(chunks(events)) + 1
    first, second = chunks(events, 1), chunks(events, 2)
    resumed = [e for e in events if e["type"] == "resumed"]
    requeued = [e for e in events if e["type"] == "requeued"]
    assert row["attempts"] == 2, row
    assert types.count("started") == 2, types
    assert len(requeued) == 1 and requeued[0]["data"]["reason"] == "its worker process died"
    phases_first = [e["data"].get("phase") for e in events if e["data"].get("attempt") == 1]
    assert "training" not in phases_first, phases_first  # killed during synthesis
    # The second attempt restored every chunk the first saved and computed only the rest.
    assert len(resumed) == 1 and resumed[0]["data"]["attempt"] == 2
    restored = resumed[0]["data"]["synthesis_chunks"]
    assert restored >= len(before) >= 2
    assert second == list(range(restored, total)), (first, second)
    assert len(second) < total
    assert set(first) | set(second) == set(range(total))
    figures(
        test="kill9_during_synthesis", jobs=1, killed_processes=len(killed),
        attempts=row["attempts"], chunks_total=total, chunks_first_attempt=len(first),
        chunks_restored=restored, chunks_second_attempt=len(second), status=row["status"],
    )  # fmt: skip


# -- 2. SIGKILL during training (prefork: the pool child and its parent) -------------------------
def test_kill9_during_training_resumes_from_the_last_epoch(h: Harness) -> None:
    """Prefork workers: the job runs in a pool child. The child and its parent (and the idle
    sibling) are killed at once after a training epoch was checkpointed. The other worker's
    sweeper requeues the job; the next attempt restores every synthesis chunk (computes none)
    and continues training after the checkpointed epoch."""
    workers = h.start_workers("p1", "p2", concurrency=2)
    job_id = h.submit(LONG_TRAINING)
    checkpoint = (
        h.root / "store" / "jobs" / job_id / "attempts" / "1" / "checkpoints" / "training.pt"
    )
    h.wait_events(
        job_id,
        lambda ev: len(epochs(ev, 1)) >= 2 and checkpoint.exists(),
        JOB_TIMEOUT_S,
        "to checkpoint a training epoch",
    )
    victim, pid = h.owner(job_id, workers)
    assert pid != victim.pid and pid in descendants(victim.pid), "the job runs in a pool child"
    killed = victim.kill9()
    assert {pid, victim.pid} <= killed
    seen_before = epochs(h.events(job_id), 1)

    row = succeeded(h, job_id)
    events = h.events(job_id)
    total_chunks = max(chunks(events)) + 1
    resumed = [e for e in events if e["type"] == "resumed"]
    first, second = epochs(events, 1), epochs(events, 2)
    assert row["attempts"] == 2, row
    assert [e["type"] for e in events].count("started") == 2
    assert len(resumed) == 1 and resumed[0]["data"]["training"] is True
    # No synthesis chunk computed again: all were restored from the checkpoints.
    assert resumed[0]["data"]["synthesis_chunks"] == total_chunks
    assert chunks(events, 2) == []
    # Training went on from the checkpointed epoch k >= 1, not from zero.
    assert second, events
    restored_epoch = second[0] - 1
    assert 1 <= restored_epoch <= max(seen_before), (first, second)
    assert second == list(range(restored_epoch + 1, 9)), second
    figures(
        test="kill9_during_training", jobs=1, killed_processes=len(killed),
        attempts=row["attempts"], epochs_total=8, epochs_first_attempt=len(first),
        epoch_restored=restored_epoch, epochs_second_attempt=len(second),
        chunks_recomputed=len(chunks(events, 2)), status=row["status"],
    )  # fmt: skip


# -- 3. killed again and again: max attempts ------------------------------------------------------
def test_a_job_killed_on_every_attempt_fails_after_max_attempts(h: Harness) -> None:
    """One prefork worker with ``CAKE_JOB_MAX_ATTEMPTS=2``; the pool child running the job is
    SIGKILLed on each attempt (as the kernel's OOM killer would). The parent survives, its
    sweeper requeues the job once, then fails it with ``max_attempts`` instead of looping; the
    worker then serves the next job."""
    (worker,) = h.start_workers("m1", concurrency=2, CAKE_JOB_MAX_ATTEMPTS="2")
    job_id = h.submit(LONG_SYNTHESIS)
    killed = []
    for attempt in (1, 2):
        h.wait_events(
            job_id, lambda ev, a=attempt: chunks(ev, a), JOB_TIMEOUT_S, f"attempt {attempt} to run"
        )
        row = h.job(job_id)
        assert row["attempts"] == attempt, row
        pid = worker.runs(row["claimed_by"])
        assert pid is not None and pid != worker.pid, row
        worker.kill9({pid})
        killed.append(pid)

    row = h.wait_job(job_id, lambda r: r["status"] in FINISHED, JOB_TIMEOUT_S, "to give up")
    assert row["status"] == "failed", row
    assert row["error"]["code"] == "max_attempts", row["error"]
    assert "interrupted 2 times" in row["error"]["message"], row["error"]
    assert "2 attempts" in row["error"]["message"], row["error"]
    assert row["attempts"] == 2
    # The worker itself lived through it and takes the next job.
    tiny = h.submit(TINY)
    assert succeeded(h, tiny)["attempts"] == 1
    assert worker.proc.poll() is None
    events = h.events(job_id)
    types = [e["type"] for e in events]
    assert types.count("started") == 2 and types[-1] == "failed", types
    assert h.job(job_id)["status"] == "failed"  # nothing ran it again
    lost = worker.log(200_000).count("exited with 'signal 9 (SIGKILL)'")
    figures(
        test="killed_until_max_attempts", jobs=2, max_attempts=2, killed_processes=len(killed),
        worker_lost_seen_by_parent=lost, attempts=row["attempts"], started_events=2,
        status=row["status"], error_code=row["error"]["code"], next_job="succeeded",
    )  # fmt: skip


# -- 4. SIGTERM: warm shutdown hands the job back --------------------------------------------------
def test_sigterm_hands_the_job_back_and_another_worker_finishes_it(h: Harness) -> None:
    """SIGTERM to the worker running a job (solo pool): it stops at its next step with its
    checkpoints kept, hands the job back to the queue without counting the attempt, and exits
    0; the other worker resumes the job from the checkpoints and finishes it."""
    workers = h.start_workers("s1", "s2")
    job_id = h.submit(LONG_SYNTHESIS)
    h.wait_events(job_id, lambda ev: len(chunks(ev)) >= 2, JOB_TIMEOUT_S, "to finish 2 chunks")
    victim, _ = h.owner(job_id, workers)
    victim.signal(signal.SIGTERM)
    code = victim.proc.wait(60)
    assert code == 0, victim.log()
    assert "handed back at shutdown" in victim.log(200_000)

    row = succeeded(h, job_id)
    events = h.events(job_id)
    requeued = [e for e in events if e["type"] == "requeued"]
    assert len(requeued) == 1 and requeued[0]["level"] == "info", requeued
    assert "worker shutting down" in requeued[0]["message"]
    # The hand-back does not count: one attempt on the job, though two workers ran it.
    assert row["attempts"] == 1, row
    started = [e for e in events if e["type"] == "started"]
    assert len(started) == 2 and started[0]["data"]["worker"] != started[1]["data"]["worker"]
    after = [e for e in events if e["seq"] > requeued[0]["seq"]]
    before = [e for e in events if e["seq"] < requeued[0]["seq"]]
    resumed = [e for e in after if e["type"] == "resumed"]
    assert len(resumed) == 1
    restored = resumed[0]["data"]["synthesis_chunks"]
    total = max(chunks(events)) + 1
    assert restored == len(chunks(before)) >= 2
    assert chunks(after) == list(range(restored, total))
    figures(
        test="sigterm_warm_shutdown", jobs=1, signals=1, exit_code=code, attempts=row["attempts"],
        handed_back=len(requeued), chunks_total=total, chunks_before=len(chunks(before)),
        chunks_after=len(chunks(after)), status=row["status"],
    )  # fmt: skip


# -- 5. the same job delivered to two workers ------------------------------------------------------
def test_a_job_delivered_twice_runs_once(h: Harness) -> None:
    """The API publishes the job; once it runs, the test publishes the same id again (a
    duplicate delivery, as after a broker redelivery). Each worker holds one message at a time
    (prefetch 1, late acks), so the duplicate goes to the other worker: its claim is refused
    and its message is acknowledged without running anything."""
    workers = h.start_workers("d1", "d2")
    job_id = h.submit(LONG_SYNTHESIS)
    # Once the job runs, its worker holds its one message; the duplicate goes to the other.
    h.wait_events(job_id, lambda ev: "started" in [e["type"] for e in ev], 60, "to start")
    with in_process_services(h.env) as services:
        services.queue.enqueue(job_id, "cpu")

    row = succeeded(h, job_id)
    assert row["attempts"] == 1
    types = [e["type"] for e in h.events(job_id)]
    assert types.count("started") == 1, types

    def task_results() -> list[str]:
        """Celery logs each task's return value once the task has returned: that is after the
        job row says ``succeeded`` (the runner writes it from inside the task), so it is waited
        for, not read at once."""
        return sorted(
            line.rsplit(":", 1)[1].strip()
            for w in workers
            for line in w.log(200_000).splitlines()
            if "cake.run_job[" in line and " succeeded in " in line
        )

    # One run, one delivery acknowledged as skipped; anything else is an error at once.
    expected = ["'skipped'", "'succeeded'"]
    seen: list[list[str]] = []

    def both_returned() -> bool:
        seen.append(task_results())
        assert set(seen[-1]) <= set(expected) and len(seen[-1]) <= 2, seen[-1]
        return seen[-1] == expected

    try:
        wait_for(both_returned, 30, "both deliveries of the job to return")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; task results {seen[-1]}\n{h.logs()}") from None
    ran = [w for w in workers if f"job {job_id}: attempt 1 on" in w.log(200_000)]
    skipped = [w for w in workers if f"job {job_id}: not claimable" in w.log(200_000)]
    assert len(ran) == 1 and len(skipped) == 1 and ran != skipped, h.logs()
    # Both messages were acknowledged: none waits, none is held.
    wait_for(lambda: h.redis.waiting("cpu") == 0, 10, "the queue to be empty")
    figures(
        test="duplicate_delivery", jobs=1, messages=2, workers=2, started_events=1,
        runs=len(ran), skipped_deliveries=len(skipped), attempts=row["attempts"],
        status=row["status"],
    )  # fmt: skip


# -- 6. cancel at every phase ----------------------------------------------------------------------
def test_cancel_at_every_phase_leaves_nothing_running(h: Harness) -> None:
    """Cancel while queued (behind a running job), during synthesis, during training, during
    evaluation or export (as far as the timing allows), and after the job succeeded. Each
    active job ends ``canceled`` with its checkpoints deleted; the finished one is returned
    unchanged (API.md: "on a finished job it changes nothing"); the worker has no child process
    left and takes the next job."""
    (worker,) = h.start_workers("c1")
    outcome: dict[str, str] = {}

    running = h.submit(LONG_SYNTHESIS)
    queued = h.submit(TINY)
    h.wait_events(running, lambda ev: chunks(ev), JOB_TIMEOUT_S, "to synthesize")
    assert h.job(queued)["status"] == "queued"  # the only worker is busy
    answer = h.cancel(queued)
    assert answer["status"] == "canceled", answer  # at once
    outcome["queued"] = answer["status"]
    assert h.cancel(running)["status"] in ("running", "canceled")
    row = h.wait_job(running, lambda r: r["status"] in FINISHED, 60, "to stop")
    outcome["synthesizing"] = row["status"]
    assert row["status"] == "canceled", row
    assert h.events(running)[-1]["message"] == "job canceled during synthesizing"

    training = h.submit(LONG_TRAINING)
    h.wait_events(training, lambda ev: epochs(ev), JOB_TIMEOUT_S, "to train")
    assert h.cancel(training)["status"] in ("running", "canceled")
    row = h.wait_job(training, lambda r: r["status"] in FINISHED, 60, "to stop")
    outcome["training"] = row["status"]
    assert row["status"] == "canceled", row
    assert h.events(training)[-1]["message"] == "job canceled during training"

    # Evaluation and export last a fraction of a second here: the cancel may land in them or
    # just after the job ended. Either way the rule holds: a cancel accepted while the job
    # runs ends it canceled (the worker checks once more before uploading the results).
    late = h.submit(TINY)
    h.wait_job(
        late,
        lambda r: r["phase"] in ("evaluating", "exporting") or r["status"] in FINISHED,
        JOB_TIMEOUT_S,
        "to evaluate or export",
    )
    answer = h.cancel(late)
    row = h.wait_job(late, lambda r: r["status"] in FINISHED, 60, "to end")
    if answer["status"] == "running":
        assert row["status"] == "canceled", (answer, row)
        message = h.events(late)[-1]["message"]
        assert message in ("job canceled during evaluating", "job canceled during exporting")
        outcome[message.rsplit(" ", 1)[1]] = row["status"]
        assert not h.artifacts(late)
    else:  # the job had finished before the cancel arrived: nothing changed
        assert answer["status"] == row["status"] == "succeeded", (answer, row)
        outcome["evaluating/exporting"] = "finished before the cancel arrived"

    done = h.submit(TINY)
    succeeded(h, done)
    before = h.events(done)
    answer = h.cancel(done)
    outcome["succeeded"] = answer["status"]
    assert answer["status"] == "succeeded", answer
    assert h.job(done)["cancel_requested"] is False
    assert h.events(done) == before

    # The queued job's message reached the worker after the first job ended: not run.
    wait_for(lambda: f"job {queued}: not claimable" in worker.log(200_000), 30, "the stale message")
    q = h.job(queued)
    assert (q["status"], q["attempts"]) == ("canceled", 0)
    for job_id in (running, training):
        assert _checkpoint_files(h, job_id) == [], f"checkpoints of canceled {job_id} left behind"
    # Nothing left running: no child process, no job claimed, and the worker takes the next.
    assert descendants(worker.pid) == set()
    after = h.submit(TINY)
    assert succeeded(h, after)["attempts"] == 1
    assert descendants(worker.pid) == set() and worker.proc.poll() is None
    figures(
        test="cancel_every_phase", jobs=6, outcome=outcome, worker_children_after=0,
        next_job="succeeded",
    )  # fmt: skip


# -- 7. a frozen worker: requeued by the sweeper, fenced off when it thaws ------------------------
def test_frozen_worker_is_replaced_and_fenced_off_when_it_thaws(h: Harness) -> None:
    """SIGSTOP the worker running a job: it is alive but sends no heartbeat. After
    ``CAKE_JOB_HEARTBEAT_TIMEOUT_S`` the other worker's sweeper requeues the job and runs it.
    SIGCONT the frozen worker while the job runs elsewhere: its claim token no longer matches,
    so nothing it does lands on the job (no progress, event, result); it notices and goes
    back to idle."""
    timeout = "5"
    workers = h.start_workers("f1", "f2", CAKE_JOB_HEARTBEAT_TIMEOUT_S=timeout)
    job_id = h.submit(LONG_SYNTHESIS)
    h.wait_events(job_id, lambda ev: len(chunks(ev, 1)) >= 2, JOB_TIMEOUT_S, "to finish 2 chunks")
    victim, pid = h.owner(job_id, workers)
    survivor = next(w for w in workers if w is not victim)
    victim.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    wait_for(lambda: _state(pid) == "T", 10, "the worker to be stopped", interval=0.02)
    try:
        h.wait_events(
            job_id,
            lambda ev: any(e["type"] == "started" and e["data"]["attempt"] == 2 for e in ev),
            JOB_TIMEOUT_S,
            "to be taken over",
        )
        frozen_s = time.monotonic() - frozen_at
        assert h.owner(job_id, workers)[0] is survivor
        assert frozen_s >= float(timeout) - 1.5  # not before its heartbeat went stale
    finally:
        victim.signal(signal.SIGCONT)
    # It finds out at its next heartbeat or step, stops, and its task ends as "lost".
    wait_for(lambda: "'lost'" in victim.log(200_000), 60, "the thawed worker's task to end")
    assert "claim lost" in victim.log(200_000)

    row = succeeded(h, job_id)
    events = h.events(job_id)
    requeued = [e for e in events if e["type"] == "requeued"]
    assert len(requeued) == 1, events
    assert requeued[0]["data"]["reason"] == "its worker stopped sending heartbeats"
    # Fenced off: after the requeue, nothing of attempt 1 reached the job's log ...
    late = [e for e in events if e["seq"] > requeued[0]["seq"] and e["data"].get("attempt") == 1]
    assert late == [], late
    assert row["attempts"] == 2 and survivor.runs(row["claimed_by"]) is not None, row
    # ... nor the store: no checkpoint left behind, every artifact is the one its row describes.
    assert _checkpoint_files(h, job_id) == []
    artifacts = h.artifacts(job_id)
    assert {"student.pt", "manifest.json"} <= set(artifacts), artifacts
    for name, (key, sha) in artifacts.items():
        data = (h.root / "store" / key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, name
    # The thawed worker is alive and idle.
    assert victim.proc.poll() is None and descendants(victim.pid) == set()
    figures(
        test="frozen_worker_fenced", jobs=1, frozen=1, heartbeat_timeout_s=float(timeout),
        frozen_until_taken_over_s=round(frozen_s, 1), requeued=len(requeued),
        attempts=row["attempts"], late_writes_of_frozen_worker=len(late), status=row["status"],
    )  # fmt: skip


# -- 8. frozen between its last claim check and its upload: the winner's bytes are served -------
def test_a_worker_frozen_before_its_upload_never_changes_the_winners_artifacts(
    h: Harness, tmp_path: Path
) -> None:
    """The worker passes its last claim check and is frozen (SIGSTOP) before its upload; its
    job is taken over and finished by another worker; then it thaws and uploads. Artifacts are
    written under per-attempt keys and the job points at the attempt that won, so every
    download route (the artifact list, each artifact, ``/student``, the client SDK and
    ``cake jobs download``) serves the winner's bytes, bit for bit, before and after the thaw,
    and the stale upload lands only in its own attempt's folder, which is then removed."""
    timeout = "5"
    hook = str(Path(__file__).parent / "freeze_before_upload")
    (victim,) = h.start_workers(
        "u1",
        CAKE_JOB_HEARTBEAT_TIMEOUT_S=timeout,
        CAKE_TEST_FREEZE_BEFORE_UPLOAD="1",
        PYTHONPATH=os.pathsep.join(p for p in (hook, h.env.get("PYTHONPATH")) if p),
    )
    job_id = h.submit(TINY)
    wait_for(lambda: "FREEZE job" in victim.log(200_000), JOB_TIMEOUT_S, "the freeze", 0.05)
    wait_for(lambda: _state(victim.pid) == "T", 10, "the worker to be stopped", interval=0.02)
    try:
        assert h.job(job_id)["status"] == "running"
        (survivor,) = h.start_workers("u2", CAKE_JOB_HEARTBEAT_TIMEOUT_S=timeout)
        row = succeeded(h, job_id)
        assert row["attempts"] == 2 and survivor.runs(row["claimed_by"]) is not None, row
        winner = _downloads(h, job_id, tmp_path / "before")
    finally:
        victim.signal(signal.SIGCONT)
    wait_for(lambda: "'lost'" in victim.log(200_000), 60, "the thawed worker's task to end")
    log = victim.log(200_000)
    assert "claim lost to another worker; it finished, but another worker holds the job" in log
    uploaded = log.split(f"FREEZE job {job_id} attempt 1: thawed, uploaded ")[1].split("\n")[0]
    stale_sha = dict(item.split("=") for item in uploaded.split())
    stale_folder = f"jobs/{job_id}/attempts/1/artifacts/"
    assert set(stale_sha) == {stale_folder + name for name in winner["rows"]}
    # The stale upload is not the winner's copy (its student and reports are its own run's),
    # so had it landed on the served keys (as before per-attempt keys) the bytes would differ.
    differ = [
        name for name, (_, sha) in winner["rows"].items() if stale_sha[stale_folder + name] != sha
    ]
    assert differ, (stale_sha, winner["rows"])

    after = _downloads(h, job_id, tmp_path / "after")
    assert after == winner  # the same rows, and every route's bytes the same, bit for bit
    assert _artifacts_attempt(h, job_id) == 2
    for name, (key, sha) in winner["rows"].items():
        assert key == f"jobs/{job_id}/attempts/2/artifacts/{name}", key
        assert hashlib.sha256(winner["bytes"][name]).hexdigest() == sha, name
    # The loser's upload is gone (the thawed worker deletes what it could not record; the
    # sweeper would otherwise), and no attempt's checkpoints are left.
    stale = h.root / "store" / "jobs" / job_id / "attempts" / "1" / "artifacts"
    assert not stale.exists() or not any(stale.iterdir())
    assert _checkpoint_files(h, job_id) == []
    assert victim.proc.poll() is None and descendants(victim.pid) == set()
    figures(
        test="frozen_before_upload", jobs=1, frozen=1, attempts=row["attempts"],
        stale_uploads=len(stale_sha), stale_copies_differing=len(differ),
        artifacts=len(winner["rows"]),
        bytes_compared=sum(len(b) for b in winner["bytes"].values()), routes=5,
        served_attempt=2, status=row["status"],
    )  # fmt: skip


def _downloads(h: Harness, job_id: str, folder: Path) -> dict[str, Any]:
    """What every download route serves for the job: the artifact rows (name -> key, sha256),
    the list route's entries, and each artifact's bytes by the artifact route, with
    ``student.pt`` also by ``/student``, the client SDK and ``cake jobs download``, which
    must all agree."""
    url = str(h.client.base_url).rstrip("/")
    listed = expect(h.client.get(f"/v1/jobs/{job_id}/artifacts"), 200)["data"]
    data: dict[str, bytes] = {}
    for item in listed:
        answer = h.client.get(f"/v1/jobs/{job_id}/artifacts/{item['name']}")
        assert answer.status_code == 200, answer.text
        assert answer.headers["etag"] == f'"{item["sha256"]}"'
        data[item["name"]] = answer.content
    student = h.client.get(f"/v1/jobs/{job_id}/student")
    assert student.status_code == 200 and student.content == data["student.pt"]
    folder.mkdir()
    with Client(url) as client:
        for name in data:
            assert client.jobs.download(job_id, name, folder).read_bytes() == data[name], name
    cli_copy = folder / "cli-student.pt"
    cli = subprocess.run(
        [sys.executable, "-m", "cake_cli.main", "jobs", "download", job_id,
         "--url", url, "-o", str(cli_copy)],
        env=h.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli_copy.read_bytes() == data["student.pt"]
    return {"rows": h.artifacts(job_id), "listed": listed, "bytes": data}


def _artifacts_attempt(h: Harness, job_id: str) -> int | None:
    """The attempt whose artifacts the job's row says it serves."""
    with psycopg.connect(h.database_url, connect_timeout=5) as conn:
        row = conn.execute("SELECT artifacts_attempt FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row[0]


def _checkpoint_files(h: Harness, job_id: str) -> list[Path]:
    """The job's checkpoint files in the local store, of every attempt."""
    folder = h.root / "store" / "jobs" / job_id
    return [p for p in folder.rglob("*.pt") if "checkpoints" in p.relative_to(folder).parts]


def _state(pid: int) -> str | None:
    """The process state letter from /proc (``T``: stopped)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()[0]
