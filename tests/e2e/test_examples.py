"""The user-facing examples, run as a user runs them against a real ``cake serve``:
``examples/curl.sh`` (curl only, the bundled wine teacher) and ``examples/pipeline.py`` (trains
a digits teacher, then the Python client). The service has an API key, so both must send
``$CAKE_API_KEY`` to get anywhere. Specs are cut down so the pair stays around a minute."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e_support import ROOT, CakeProcess, free_port, service_env

READY_TIMEOUT_S = 120  # migrations, then the API; the worker imports torch meanwhile
RUN_TIMEOUT_S = 300  # each script, on a loaded 2-core machine (about 15-30 s when idle)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CAKE = [sys.executable, "-m", "cake_cli.main"]
# examples/pipeline.py flags for a job of seconds: a 10-epoch teacher, a small synthetic set.
SMALL_DIGITS = ["--teacher-epochs", "10", "--num-samples", "1500", "--steps", "30"]
SMALL_DIGITS += ["--epochs", "12", "--batch-size", "64"]


@dataclass
class Service:
    url: str
    key: str
    server: CakeProcess

    def env(self, **extra: str) -> dict[str, str]:
        """The environment the examples run in: the service's URL and key, one CPU thread."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
        return {
            **env,
            "CAKE_URL": self.url,
            "CAKE_API_KEY": self.key,
            "OMP_NUM_THREADS": "1",
            **extra,
        }


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``cake serve`` on a free port with one API key created beforehand."""
    root = tmp_path_factory.mktemp("examples")
    data = root / "data"
    env = service_env()
    created = subprocess.run(
        [*CAKE, "keys", "create", "--tenant", "examples", "--data-dir", str(data), "--json"],
        env=env,
        cwd=str(root),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    port = free_port()
    server = CakeProcess(
        ["serve", "--port", str(port), "--data-dir", str(data)], env, root / "serve.log", root
    )
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http(url + "/readyz", READY_TIMEOUT_S)
        # A key exists, so the service refuses requests without one: the examples below only
        # get through because they send $CAKE_API_KEY.
        assert httpx.get(url + "/v1/teachers", timeout=10).status_code == 401
        yield Service(url, key, server)
    finally:
        server.stop()


def _run(service: Service, args: list[str], cwd: Path, **env: str) -> str:
    """Run an example to its end; on failure or timeout, show its output and the service's."""
    try:
        run = subprocess.run(
            args,
            cwd=str(cwd),
            env=service.env(**env),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(
            f"{args[1]} still running after {RUN_TIMEOUT_S}s; stdout so far:\n{partial}\n"
            f"--- cake serve:\n{service.server.log()}"
        )
    shown = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\n--- cake serve:\n{service.server.log()}"
    assert run.returncode == 0, shown
    return run.stdout


def _accuracies(stdout: str) -> tuple[float, float, float]:
    found = {
        name: float(m.group(1))
        for name in ("teacher accuracy", "student accuracy", "ratio")
        if (m := re.search(rf"^{name}: ([0-9.]+)", stdout, re.M))
    }
    assert len(found) == 3, stdout
    return found["teacher accuracy"], found["student accuracy"], found["ratio"]


def test_curl_example_distils_the_wine_teacher(service: Service, tmp_path: Path) -> None:
    stdout = _run(
        service,
        ["bash", str(ROOT / "examples" / "curl.sh")],  # URL from $CAKE_URL, default OUTDIR
        tmp_path,
        SPEC=json.dumps(
            {"preset": "fast", "synthesis": {"num_samples": 1500}, "training": {"epochs": 10}}
        ),
        TIMEOUT_S=str(RUN_TIMEOUT_S - 60),
    )
    out = tmp_path / "out" / "curl-example"
    teacher, student, ratio = _accuracies(stdout)
    assert teacher >= 0.9 and student >= 0.9 * teacher, stdout
    assert ratio == pytest.approx(student / teacher, abs=1e-3)
    assert "(required: 0.90)" in stdout  # MIN_RATIO's default
    assert "student output shape: torch.Size([2, 3])" in stdout, stdout
    assert (out / "student.pt").stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    report = (out / "report.md").read_text()
    assert f"| `student_accuracy` | {student:.4f} |" in report
    assert "![curves](curves.png)" in report


def test_python_pipeline_example_on_digits(service: Service, tmp_path: Path) -> None:
    out = tmp_path / "pipeline"
    min_ratio = 0.5  # the cut-down spec below; the default spec's 0.9 takes minutes
    stdout = _run(
        service,
        [
            sys.executable,
            str(ROOT / "examples" / "pipeline.py"),
            "--out",
            str(out),
            *SMALL_DIGITS,
            "--min-ratio",
            str(min_ratio),
            "--timeout",
            str(RUN_TIMEOUT_S - 60),
        ],
        tmp_path,
    )
    teacher, student, ratio = _accuracies(stdout)
    assert teacher >= 0.9, stdout
    assert ratio >= min_ratio and ratio == pytest.approx(student / teacher, abs=1e-3), stdout
    service_student = float(re.search(r"service reported student accuracy: ([0-9.]+)", stdout)[1])
    # The service evaluated the same student on the same split (one digit of 360 at most
    # may flip between the eager model and its TorchScript export).
    assert abs(service_student - student) <= 1 / 360 + 1e-4, stdout
    assert re.search(r"\[ *\d+%\] running +training", stdout), "progress was printed"
    for name in ("teacher.pt", "student.pt", "manifest.json", "report.md"):
        assert (out / name).stat().st_size > 0, name
    for name in ("curves.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
    report = (out / "report.md").read_text()
    assert "![samples](samples.png)" in report and "![curves](curves.png)" in report
