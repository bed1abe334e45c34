"""A real install, as a user gets it: ``pip install .`` (a wheel, not editable) into a fresh
virtual environment, then ``cake serve`` started from an empty folder with no configuration runs
a job to ``succeeded`` over HTTP.

Nothing of the checkout may help: the project is built from a copy of exactly what a build
reads (``pyproject.toml``, the README and the packages it lists), the processes run with the
empty folder as their working directory, no ``PYTHONPATH`` and no ``CAKE_*`` variable, and the
test checks that every package of the project is imported from the venv. So migrations, the
dashboard's files and anything else read at run time must come with the wheel.

The dependencies are not downloaded again (torch alone is hundreds of MB): the fresh venv sees
this environment's site-packages through a ``.pth`` line, after its own, so pip in the venv
finds every requirement already satisfied and installs the project alone. ``.pth`` files of that
folder are not run, so an editable install of the project there stays invisible.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2e_support import FINISHED, ROOT, descendants, expect, free_port, kill_pids, wait_for

pytestmark = pytest.mark.slow

INSTALL_TIMEOUT_S = 300
READY_TIMEOUT_S = 120  # migrations, then the API; the worker imports torch meanwhile
JOB_TIMEOUT_S = 300
#: The wine MLP with a tiny synthesis and one epoch: seconds once the worker is up.
TINY = {"preset": "fast", "synthesis": {"num_samples": 200, "steps": 5}, "training": {"epochs": 1}}


def build_sources(dest: Path) -> Path:
    """A copy of what ``pip install .`` reads: pyproject.toml, its readme, its packages."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = ["pyproject.toml", config["project"]["readme"]]
    names += [p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]]
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


def clean_env(venv: Path) -> dict[str, str]:
    """This environment without anything that could point back at the checkout."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHON")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_") and k not in drop}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project installed from a wheel (pip builds it from the copy)."""
    root = tmp_path_factory.mktemp("wheel-install")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_outer_site_packages.pth").write_text("\n".join(sorted(here)) + "\n")
    sources = build_sources(root / "src")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", str(sources)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, cwd=root,
        env=clean_env(venv), check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    shutil.rmtree(sources)  # nothing of the sources is left to import by accident
    return venv


def test_the_installed_package_carries_what_it_reads_at_run_time(venv: Path, tmp_path: Path):
    """Every package comes from the venv (not the checkout), as a regular install (no
    ``direct_url.json`` saying editable), with the migrations and the dashboard's files."""
    probe = """
import importlib.metadata, json, pathlib
import api, api.routes.dashboard as dashboard, cake_cli, cake_cli.service as service, migrations
here = pathlib.Path(migrations.__file__).parent
direct = importlib.metadata.distribution("cake-distill").read_text("direct_url.json") or "{}"
print(json.dumps({
    "files": {m.__name__: m.__file__ for m in (api, cake_cli, migrations, service)},
    "editable": json.loads(direct).get("dir_info", {}).get("editable", False),
    "migrations": sorted(p.name for p in (here / "versions").glob("*.py")),
    "env_py": (here / "env.py").is_file(),
    "dashboard": sorted(p.name for p in pathlib.Path(dashboard.DASHBOARD_DIR).iterdir()),
}))
"""
    run = subprocess.run(
        [venv / "bin" / "python", "-c", probe], capture_output=True, text=True, timeout=120,
        cwd=tmp_path, env=clean_env(venv), check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    found = json.loads(run.stdout)
    for name, path in found["files"].items():
        assert Path(path).is_relative_to(venv), f"{name} imported from {path}, not the venv"
    assert found["editable"] is False
    assert found["env_py"], "migrations/env.py is missing from the install"
    shipped = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert found["migrations"] == shipped
    assert {"index.html", "app.js", "style.css"} <= set(found["dashboard"])


@pytest.fixture
def served(venv: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``cake serve`` (the venv's script) in an empty folder, no flags but a free port."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    log_path = tmp_path / "serve.log"
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [venv / "bin" / "cake", "serve", "--port", str(port)],
            cwd=workdir, env=clean_env(venv), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    seen: set[int] = set()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        seen.update(descendants(proc.pid))
        if proc.poll() is not None:
            raise AssertionError(f"cake serve exited with {proc.returncode}:\n{log_tail()}")
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-6000:]

    try:
        try:
            wait_for(ready, READY_TIMEOUT_S, f"{url}/readyz to answer 200", interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- cake serve:\n{log_tail()}") from None
        yield url, log_path
    finally:
        seen.update(descendants(proc.pid))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # Ctrl-C: the documented stop
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        kill_pids(seen)


def test_cake_serve_from_an_empty_folder_runs_a_job(served: tuple[str, Path]) -> None:
    url, log_path = served
    with httpx.Client(base_url=url, timeout=60) as client:
        with open(ROOT / "examples" / "wine_mlp.pt", "rb") as fh:
            teacher = expect(
                client.post(
                    "/v1/teachers",
                    files={"file": ("wine_mlp.pt", fh)},
                    data={"input_shape": "[13]"},
                ),
                201,
            )
        job = expect(client.post("/v1/jobs", json={"teacher_id": teacher["id"], **TINY}), 202)
        start = time.monotonic()

        def finished() -> dict | None:
            body = expect(client.get(f"/v1/jobs/{job['id']}"), 200)
            return body if body["status"] in FINISHED else None

        try:
            final = wait_for(finished, JOB_TIMEOUT_S, f"job {job['id']} to finish", interval=1)
        except AssertionError as exc:
            last = client.get(f"/v1/jobs/{job['id']}").text
            tail = log_path.read_text(errors="replace")[-6000:]
            raise AssertionError(f"{exc}; job: {last}\n--- cake serve:\n{tail}") from None
        assert final["status"] == "succeeded", (final, log_path.read_text()[-6000:])
        student = client.get(f"/v1/jobs/{job['id']}/student")
        assert student.status_code == 200 and len(student.content) > 1000
        dashboard = client.get("/")
        assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
        print(f"FIGURES wheel_install job_s={time.monotonic() - start:.1f}")
