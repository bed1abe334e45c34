"""``cake serve --workers N``: N API processes on one port, sharing the embedded database."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
from e2e_support import (
    CakeProcess,
    command_line,
    descendants,
    expect,
    free_port,
    is_alive,
    service_env,
    wait_for,
)

READY_TIMEOUT_S = 120  # migrations, then two API processes, on a loaded 2-core machine
#: What uvicorn's access log writes for each ``GET /v1/jobs``.
ACCESS_LINE = '"GET /v1/jobs HTTP/1.1" 200'


def _api_processes(serve_pid: int) -> set[int]:
    """The API processes uvicorn's supervisor spawned (not the sandbox's fork servers)."""
    return {pid for pid in descendants(serve_pid) if "spawn_main" in command_line(pid)}


def test_two_api_processes_serve_one_port_and_stop_together(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = CakeProcess(
        ["serve", "--no-worker", "--workers", "2", "--port", str(port)],
        service_env(CAKE_DATA_DIR=str(tmp_path / "data")),
        tmp_path / "serve.log",
        cwd=tmp_path,
    )
    try:
        serve.wait_http(url + "/readyz", READY_TIMEOUT_S)
        api = _api_processes(serve.pid)
        assert len(api) == 2, (api, serve.log())
        # New connections land on either process; both answer from the one database.
        for _ in range(20):
            with httpx.Client(base_url=url, timeout=30) as fresh_connection:
                assert expect(fresh_connection.get("/v1/jobs"), 200)["data"] == []
        wait_for(lambda: ACCESS_LINE in serve.log(), 30, "the access log's line per request")
        everything = serve.remember_children()
        serve.proc.send_signal(signal.SIGTERM)  # the documented clean stop
        assert serve.proc.wait(60) == 0, serve.log()

        def left() -> dict[int, str]:
            return {pid: command_line(pid) for pid in everything if is_alive(pid)}

        # The sandbox's fork servers go when the pipe from their API process closes.
        wait_for(lambda: not left(), 30, f"every process of cake serve to end: {left()}")
    finally:
        serve.stop()


def test_no_access_log_writes_no_line_per_request(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = CakeProcess(
        ["serve", "--no-worker", "--no-access-log", "--port", str(port)],
        service_env(CAKE_DATA_DIR=str(tmp_path / "data")),
        tmp_path / "serve.log",
        cwd=tmp_path,
    )
    try:
        serve.wait_http(url + "/readyz", READY_TIMEOUT_S)
        counted = 'route="/v1/jobs",status="200"} 3.0'
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(3):
                assert expect(client.get("/v1/jobs"), 200)["data"] == []
            # The requests are still counted on /metrics (a request is counted once its answer
            # is out, so the last one may show a moment after the client has it).
            wait_for(lambda: counted in client.get("/metrics").text, 30, "three counted GETs")
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(60) == 0, serve.log()
        assert ACCESS_LINE not in serve.log()
    finally:
        serve.stop()


def test_workers_below_one_are_refused(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "cake_cli.main", "serve", "--workers", "0"],
        cwd=tmp_path,
        env=service_env(CAKE_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "--workers must be at least 1, not 0" in run.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything
