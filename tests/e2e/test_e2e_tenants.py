"""Tenants end to end: keys made by `cake keys`, a real API and a worker running two jobs at
once, one tenant's running-jobs limit holding, and no tenant seeing another's job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_support import ROOT, CakeProcess, expect, free_port, service_env

from cake_client import Client, NotFound, Unauthorized

WINE = ROOT / "examples" / "wine_mlp.pt"
SPEC = {
    "preset": "fast",
    "synthesis": {"num_samples": 1200, "steps": 30},
    "training": {"epochs": 8},
}


def _cake(env: dict[str, str], cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "cake_cli.main", *args],
        env=env, cwd=str(cwd), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_running_limit_and_isolation_between_tenants(tmp_path: Path) -> None:
    env = service_env(CAKE_DATA_DIR=str(tmp_path / "data"), CAKE_SWEEP_INTERVAL_S="2")
    alice = _cake(env, tmp_path, "keys", "create", "--tenant", "alice")
    bob = _cake(env, tmp_path, "keys", "create", "--tenant", "bob")
    _cake(env, tmp_path, "tenants", "set", "alice", "--max-running-jobs", "1")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = CakeProcess(
        ["serve", "--no-worker", "--port", str(port)], env, tmp_path / "api.log", tmp_path
    )
    worker = CakeProcess(
        ["worker", "--queues", "cpu,gpu", "--concurrency", "2"], env, tmp_path / "w.log", tmp_path
    )
    try:
        api.wait_http(f"{base}/healthz", 120)
        assert httpx.get(f"{base}/v1/jobs").status_code == 401

        with Client(base, api_key=alice) as as_alice, Client(base, api_key=bob) as as_bob:
            teacher = as_alice.teachers.upload(WINE, [13])
            jobs = [as_alice.jobs.create(teacher.id, spec=SPEC) for _ in range(2)]
            with pytest.raises(NotFound):
                as_bob.jobs.get(jobs[0].id)
            assert list(as_bob.jobs.list()) == []
            bob_teacher = as_bob.teachers.upload(WINE, [13])
            bob_job = as_bob.jobs.create(bob_teacher.id, spec=SPEC)

            finished = [as_alice.jobs.wait(j.id, timeout=240) for j in jobs]
            assert [j.status for j in finished] == ["succeeded", "succeeded"], finished
            assert as_bob.jobs.wait(bob_job.id, timeout=240).status == "succeeded"

            # alice's jobs never ran at the same time: one started after the other ended
            first, second = sorted(finished, key=lambda j: j.started_at)
            assert second.started_at >= first.finished_at, (first, second)
            waited = [
                j.id
                for j in finished
                if any(e.type == "waiting" for e in as_alice.jobs.events(j.id))
            ]
            assert waited == [second.id]

        with Client(base, api_key="cake_not_a_key", max_retries=0) as stranger:
            with pytest.raises(Unauthorized) as refused:
                stranger.jobs.get(jobs[0].id)
            assert refused.value.code == "unauthorized"
        expect(
            httpx.get(f"{base}/v1/jobs/{jobs[0].id}", headers={"Authorization": f"Bearer {bob}"}),
            404,
        )

        listed = subprocess.run(
            [sys.executable, "-m", "cake_cli.main", "jobs", "list", "--url", base, "--json"],
            env={**env, "CAKE_API_KEY": "cake_wrong"}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 6, listed.stderr
        worker.check_running()
    finally:
        worker.stop()
        api.stop()
