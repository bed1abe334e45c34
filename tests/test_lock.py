"""The lock (``constraints.txt``) and the scripts that install from it.

- every requirement of ``pyproject.toml`` (dependencies and every extra) is pinned, at a version
  its specifier allows, and nothing is pinned twice;
- the environment the tests run in is the lock, exactly (``scripts/lock.py --check``): CI builds
  a fresh venv from it every run, so a drifted or missing pin fails here, not later;
- torch is pinned there and only there: no script or image names a version of its own, and the
  torch the tests (and the API's teacher check) run is that version;
- ``scripts/lock.py`` follows extras and markers the way pip does;
- the scripts choose the Python the README promises: ``$PYTHON``, else the active venv, else
  ``.venv``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
HOW_TO_FIX = (
    "install from the lock (`bash scripts/setup.sh`), or upgrade it deliberately "
    "(`bash scripts/lock.sh`, then commit constraints.txt)"
)


@pytest.fixture(scope="module")
def lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cake_lock", ROOT / "scripts" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_requirement_of_the_project_is_pinned_once(lock: ModuleType) -> None:
    lines = [
        line.strip()
        for line in LOCK.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    names = [canonicalize_name(line.partition("==")[0]) for line in lines]
    assert len(names) == len(set(names)), "a package pinned twice"
    assert lines == sorted(lines, key=str.lower), "keep the lock sorted (scripts/lock.py does)"
    pins = lock.read_pins()
    assert "cake-distill" not in pins
    for req in lock.project_requirements():
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in constraints.txt: {HOW_TO_FIX}"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {req}: {HOW_TO_FIX}"
        )


def test_this_environment_is_the_lock(lock: ModuleType, capsys: pytest.CaptureFixture) -> None:
    code = lock.main(["--check"])
    assert code == 0, f"{capsys.readouterr().err}\n{HOW_TO_FIX}"


def test_torch_is_pinned_in_the_lock_and_nowhere_else(lock: ModuleType) -> None:
    import torch

    pinned = lock.read_pins()["torch"]
    assert Version(torch.__version__).public == pinned, (
        f"this torch is {torch.__version__}, the lock pins {pinned}: {HOW_TO_FIX}"
    )
    places = [
        ROOT / "pyproject.toml",
        *sorted((ROOT / "scripts").glob("*.sh")),
        *sorted((ROOT / "docker").glob("*Dockerfile")),
        ROOT / "docker-compose.yml",
        ROOT / ".ci" / "run",
    ]
    version = re.compile(r"torch\s*==\s*\d|TORCH_VERSION\s*=\s*\d|pytorch/pytorch:\d")
    for path in places:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not version.search(line), f"{path.name}:{number}: a torch version: {line}"


def test_the_closure_follows_extras_and_markers(lock: ModuleType) -> None:
    plain = lock.closure([Requirement("uvicorn")])
    standard = lock.closure([Requirement("uvicorn[standard]")])
    assert "uvicorn" in plain and "httptools" not in plain
    assert {"uvicorn", "httptools", "websockets"} <= set(standard)
    if sys.platform == "linux":
        assert "uvloop" in standard
    assert lock.closure([Requirement('tomli; python_version < "3"')]) == {}
    with pytest.raises(LookupError, match="no-such-package-here"):
        lock.closure([Requirement("no-such-package-here")])


def test_pins_drop_local_version_labels(lock: ModuleType) -> None:
    """``torch==2.13.0`` fits the CPU wheel (``2.13.0+cpu``) and the CUDA one alike."""
    assert all("+" not in line for line in lock.pins())


def interpreter(env: dict[str, str]) -> tuple[str, str]:
    """(PYTHON, the first PATH entry) after ``source scripts/_env.sh`` with ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    run = subprocess.run(
        ["bash", "-c", 'source scripts/_env.sh && printf "%s\\n%s" "$PYTHON" "${PATH%%:*}"'],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    python, first = run.stdout.split("\n")
    return python, first


def test_the_scripts_use_pythons_venv_or_dot_venv() -> None:
    assert interpreter({}) == (f"{ROOT}/.venv/bin/python", f"{ROOT}/.venv/bin")
    assert interpreter({"VIRTUAL_ENV": "/opt/v"}) == ("/opt/v/bin/python", "/opt/v/bin")
    assert interpreter({"PYTHON": "/usr/bin/python3.11"})[0] == "/usr/bin/python3.11"


def test_the_scripts_parse() -> None:
    for path in [*sorted((ROOT / "scripts").glob("*.sh")), ROOT / ".ci" / "run"]:
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{path.name}: {check.stderr}"
