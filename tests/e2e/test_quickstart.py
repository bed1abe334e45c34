"""The README's first command, ``bash scripts/quickstart.sh``, as a user runs it: it installs the
service (``scripts/setup.sh --service``: no test tools, no browser), starts ``cake serve`` on
the embedded defaults, submits the bundled digits teacher through the REST API, shows the job's
progress to the end with the student's accuracy, prints the dashboard's URL and keeps the
service running until Ctrl-C, which stops it.

The job is cut down (``--spec`` passed on to ``cake submit``) so the test takes seconds; the data
directory and the outputs go to a temporary folder (``CAKE_DATA_DIR``, ``OUT``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_support import ROOT, descendants, free_port, kill_pids, wait_for

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 600  # the install (already satisfied: seconds), the service's start, the job
TINY = {"synthesis": {"num_samples": 200, "steps": 5}, "training": {"epochs": 1}}


def test_the_service_installs_without_the_browser() -> None:
    """chromium is for the browser tests only: scripts/test.sh installs it, not the set-up."""
    assert "chromium" not in (ROOT / "scripts" / "setup.sh").read_text()
    assert "chromium" not in (ROOT / "scripts" / "quickstart.sh").read_text()
    assert "apt-get install -y -qq chromium" in (ROOT / "scripts" / "test.sh").read_text()
    assert "setup.sh --service" in (ROOT / "scripts" / "quickstart.sh").read_text()


def test_quickstart_runs_the_digits_job_and_serves_until_ctrl_c(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    env.update(
        PYTHON=sys.executable,
        PORT=str(port),
        CAKE_DATA_DIR=str(tmp_path / "data"),
        OUT=str(tmp_path / "out"),
        OMP_NUM_THREADS="1",
    )
    log_path = tmp_path / "quickstart.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", "scripts/quickstart.sh", "--spec", str(spec)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    seen: set[int] = set()

    def output() -> str:
        return log_path.read_text(errors="replace")

    def serving() -> bool:
        seen.update(descendants(proc.pid))
        if proc.poll() is not None:
            raise AssertionError(f"quickstart.sh exited with {proc.returncode}:\n{output()}")
        return "Ctrl-C stops it" in output()

    try:
        try:
            wait_for(serving, RUN_TIMEOUT_S, "quickstart.sh to finish its job", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{output()[-6000:]}") from None
        text = output()
        assert re.search(r"job job_\w+ succeeded", text), text[-6000:]
        assert "student_accuracy" in text and "teacher_accuracy" in text, text[-6000:]
        dashboard = re.search(rf"dashboard: (http://127\.0\.0\.1:{port}/#/jobs/job_\w+)", text)
        assert dashboard, text[-6000:]
        assert (tmp_path / "out" / "student.pt").stat().st_size > 1000
        # the service still runs: the dashboard answers
        page = httpx.get(dashboard.group(1).split("#")[0], timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()

        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C (the terminal sends it to the script)
        assert proc.wait(90) == 130, output()[-3000:]
        assert "stopping the service" in output()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)
    finally:
        seen.update(descendants(proc.pid))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_pids(seen)
