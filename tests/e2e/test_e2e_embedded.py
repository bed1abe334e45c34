"""End to end on the embedded defaults: ``cake serve`` with nothing configured (SQLite, a local
store, the filesystem broker and a real Celery worker child), driven by the README's curl
walk-through (``scripts/curl_walkthrough.sh``, which runs ``examples/curl.sh``), then stopped
with Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    ROOT,
    CakeProcess,
    command_line,
    descendants,
    free_port,
    is_alive,
    service_env,
)

READY_TIMEOUT_S = 120  # migrations, then the API; the worker imports torch meanwhile
WALKTHROUGH_TIMEOUT_S = 300  # a `fast` wine job takes seconds on an idle worker
STOP_TIMEOUT_S = 60  # cake serve gives its worker 30 s to hand its job back, then stops it


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[CakeProcess, str]]:
    port = free_port()
    server = CakeProcess(
        ["serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        service_env(),
        tmp_path / "serve.log",
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http(url + "/readyz", READY_TIMEOUT_S)
        yield server, url
    finally:
        server.stop()


def test_curl_walkthrough_on_cake_serve_then_ctrl_c(
    embedded: tuple[CakeProcess, str], tmp_path: Path
) -> None:
    server, url = embedded
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "curl_walkthrough.sh"), url, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=WALKTHROUGH_TIMEOUT_S + 60,
        env={**os.environ, "WALKTHROUGH_TIMEOUT_S": str(WALKTHROUGH_TIMEOUT_S)},
        check=False,
    )
    shown = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\n--- cake serve:\n{server.log()}"
    assert run.returncode == 0, shown
    assert "student output shape: torch.Size([2, 3])" in run.stdout, shown
    assert "teacher accuracy: " in run.stdout and "student accuracy: " in run.stdout, shown
    assert (tmp_path / "out" / "student.pt").stat().st_size > 0

    # The embedded service runs a real Celery worker as a child process: `cake worker` of the
    # installed package.
    children = server.remember_children()
    workers = [pid for pid in children if "cake_cli.main worker" in command_line(pid)]
    assert workers, f"no cake worker below cake serve: {[command_line(p) for p in children]}"

    # Ctrl-C in a terminal signals the foreground process group: cake serve and the helpers
    # that share its group (the worker has a session of its own; cake serve stops it).
    os.killpg(server.pid, signal.SIGINT)
    try:
        code = server.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"cake serve did not stop within {STOP_TIMEOUT_S}s of SIGINT:\n{server.log()}")
    assert code == 0, f"cake serve exited with {code} after SIGINT:\n{server.log()}"

    deadline = time.monotonic() + 10
    while (left := [p for p in children if is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left after cake serve stopped: {[command_line(p) for p in left]}"
    assert not descendants(server.pid)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/healthz", timeout=2)
