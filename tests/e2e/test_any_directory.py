"""The service works wherever it is started, and nobody waits for nobody unawares.

- ``cake serve`` started in an empty folder with nothing configured (only ``--port``, to get a
  free one) runs a job to ``succeeded``: its worker opens the same database, store and broker
  as the API, whatever its working folder, and needs no ``PYTHONPATH``.
- With no worker (``cake serve --no-worker``) a submitted job gets a ``no_worker`` event within
  30 s, ``/readyz`` names the queue missing a worker, and ``cake jobs wait`` says so; a ``cake
  worker`` started later (from another folder) runs the job, and once it stops the queue is
  missing a worker again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import (
    FINISHED,
    ROOT,
    CakeProcess,
    all_events,
    command_line,
    expect,
    free_port,
    poll_job,
    wait_for,
)

READY_TIMEOUT_S = 120  # migrations, then the API; the worker imports torch meanwhile
JOB_TIMEOUT_S = 300  # a tiny wine job takes seconds on an idle worker
NO_WORKER_WITHIN_S = 30
WINE = ROOT / "examples" / "wine_mlp.pt"
TINY = {"preset": "fast", "synthesis": {"num_samples": 200, "steps": 5}, "training": {"epochs": 1}}


def bare_env() -> dict[str, str]:
    """This environment without any ``CAKE_*`` setting and, when the project is installed
    (``pip install -e .`` as the set-up does), without ``PYTHONPATH`` either."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    env["OMP_NUM_THREADS"] = "1"
    env.pop("PYTHONPATH", None)
    probe = subprocess.run(
        [sys.executable, "-P", "-c", "import cake_cli, worker, api"],
        cwd="/",
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:  # a checkout that is not installed: it needs the path
        env["PYTHONPATH"] = str(ROOT)
    return env


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _submit(client: httpx.Client) -> dict[str, Any]:
    with open(WINE, "rb") as fh:
        teacher = expect(
            client.post(
                "/v1/teachers", files={"file": ("wine.pt", fh)}, data={"input_shape": "13"}
            ),
            201,
        )
    return expect(client.post("/v1/jobs", json={"teacher_id": teacher["id"], **TINY}), 202)


@pytest.fixture
def folders(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(an empty folder to start in, a folder for the logs)."""
    empty, logs = tmp_path / "empty", tmp_path / "logs"
    empty.mkdir()
    logs.mkdir()
    yield empty, logs


def test_cake_serve_in_an_empty_folder_runs_a_job(folders: tuple[Path, Path]) -> None:
    empty, logs = folders
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = CakeProcess(["serve", "--port", str(port)], bare_env(), logs / "serve.log", empty)
    try:
        server.wait_http(url + "/readyz", READY_TIMEOUT_S)
        with httpx.Client(base_url=url, timeout=60) as client:
            job = _submit(client)
            done = poll_job(
                client,
                job["id"],
                lambda j: j["status"] in FINISHED,
                JOB_TIMEOUT_S,
                "to finish",
                check=server.check_running,
            )
            assert done["status"] == "succeeded", f"{done}\n{server.log()}"
            types = [e["type"] for e in all_events(client, job["id"])]
            assert types[0] == "queued" and types[-1] == "succeeded", types
            student = client.get(f"/v1/jobs/{job['id']}/student")
            assert student.status_code == 200 and len(student.content) > 0

            # The embedded worker: the installed package's `cake worker`, in the folder cake
            # serve was started in, told the absolute locations through its environment.
            children = server.remember_children()
            (worker,) = [p for p in children if " worker " in command_line(p)]
            assert "cake_cli.main worker" in command_line(worker), command_line(worker)
            assert Path(f"/proc/{worker}/cwd").resolve() == empty.resolve()
            env = _environ(worker)
            data = empty.resolve() / "cake-data"
            assert env["CAKE_DATA_DIR"] == str(data)
            assert env["CAKE_DATABASE_URL"] == f"sqlite:///{data / 'cake.db'}"
            assert env["CAKE_STORE_URL"] == f"file://{data / 'store'}"
            assert (data / "cake.db").is_file()

            ready = expect(client.get("/readyz"), 200)
            assert ready["workers"]["live"]["cpu"] == 1 and ready["workers"]["missing"] == []
            (seen,) = ready["workers"]["workers"]
            assert seen["queues"] == ["cpu", "gpu"] and seen["device"] in ("cpu", "cuda")
    finally:
        server.stop()


def test_a_job_with_no_worker_says_so_then_runs_when_one_starts(
    folders: tuple[Path, Path], tmp_path: Path
) -> None:
    empty, logs = folders
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = bare_env()
    api = CakeProcess(["serve", "--no-worker", "--port", str(port)], env, logs / "api.log", empty)
    worker: CakeProcess | None = None
    waiter: subprocess.Popen[str] | None = None
    try:
        api.wait_http(url + "/readyz", READY_TIMEOUT_S)
        with httpx.Client(base_url=url, timeout=60) as client:
            ready = expect(client.get("/readyz"), 200)
            assert ready["workers"]["missing"] == ["cpu"], ready
            assert ready["workers"]["live"] == {"gpu": 0, "cpu": 0}

            job = _submit(client)
            submitted = time.monotonic()

            def flagged() -> list[dict[str, Any]]:
                api.check_running()
                return [e for e in all_events(client, job["id"]) if e["type"] == "no_worker"]

            (event,) = wait_for(flagged, NO_WORKER_WITHIN_S, "a no_worker event", interval=0.5)
            assert time.monotonic() - submitted <= NO_WORKER_WITHIN_S
            assert event["level"] == "warning" and "cpu queue" in event["message"], event
            assert expect(client.get(f"/v1/jobs/{job['id']}"), 200)["status"] == "queued"
            ready = expect(client.get("/readyz"), 200)
            assert ready["workers"]["missing"] == ["cpu"] and ready["workers"]["queued"]["cpu"] == 1

            # `cake jobs wait` shows the event while it waits.
            waiter = subprocess.Popen(
                [sys.executable, "-m", "cake_cli.main", "jobs", "wait", job["id"], "--url", url],
                cwd=empty,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

            # A worker started later, from another folder, pointed at the same data folder.
            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir()
            worker_env = {**env, "CAKE_DATA_DIR": str(empty / "cake-data")}
            worker = CakeProcess(
                ["worker", "--queues", "cpu"], worker_env, logs / "worker.log", elsewhere
            )
            done = poll_job(
                client,
                job["id"],
                lambda j: j["status"] in FINISHED,
                JOB_TIMEOUT_S,
                "to finish once a worker runs",
                check=worker.check_running,
            )
            assert done["status"] == "succeeded", f"{done}\n{worker.log()}"
            out, err = waiter.communicate(timeout=120)
            assert waiter.returncode == 0, f"{out}\n{err}"
            assert "warning: no live worker serves the cpu queue" in err, err

            def live() -> dict[str, Any] | None:
                body = expect(client.get("/readyz"), 200)["workers"]
                return body if body["live"]["cpu"] == 1 else None

            assert wait_for(live, 30, "the worker to count as live")["missing"] == []

            # The only worker stops: its queue is missing a worker again, at once.
            os.kill(worker.pid, signal.SIGTERM)
            assert worker.proc.wait(60) == 0, worker.log()

            def missing() -> bool:
                return expect(client.get("/readyz"), 200)["workers"]["missing"] == ["cpu"]

            wait_for(missing, 10, "/readyz to name the cpu queue again")
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
            waiter.wait()
        if worker is not None:
            worker.stop()
        api.stop()
