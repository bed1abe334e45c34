"""``cake serve`` never leaves its worker behind, however it ends.

The worker runs in a session of its own (a terminal's Ctrl-C reaches only ``cake serve``, which
then stops it in order). A ``cake serve`` killed outright cannot do that; the worker must
notice it lost its parent and stop by itself rather than run queued jobs, orphaned, at full CPU.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from client_support import start_cake_server

STOP_TIMEOUT_S = 60.0


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for an init that does not reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def _worker_pid(log_path: Path) -> int:
    match = re.search(r"worker started \(pid (\d+)", log_path.read_text(errors="replace"))
    assert match, "cake serve did not log its worker's pid"
    return int(match.group(1))


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_the_worker_stops_when_cake_serve_ends(tmp_path: Path, how: str) -> None:
    server = start_cake_server(tmp_path)
    worker = _worker_pid(server.log_path)
    try:
        assert _alive(worker)
        server.proc.send_signal(getattr(signal, how))
        server.proc.wait(STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), (
            f"worker {worker} outlived cake serve ({how}):\n{server.log_tail()}"
        )
        if how == "SIGKILL":
            # The worker says why it stopped: it noticed the loss while running, or (on a busy
            # machine, where cake serve can be killed before the worker's interpreter is up)
            # found its parent gone on start and refused to run.
            log_text = server.log_path.read_text(errors="replace")
            assert re.search(
                r"is gone: stopping this worker|the parent process \d+ is already gone", log_text
            ), f"worker {worker} stopped without saying why:\n{server.log_tail()}"
    finally:
        server.stop()
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
