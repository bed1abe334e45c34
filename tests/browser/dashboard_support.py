"""Helpers of the dashboard's browser tests: Debian's chromium driven by Playwright, and the
end-to-end tests' process helpers (``tests/e2e/e2e_support.py``) for a real ``cake serve``.

The browser is the system one (``/usr/bin/chromium``, installed by ``scripts/test.sh``):
``playwright install`` would download a browser build of its own, which this project never
does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import (
    ROOT,
    CakeProcess,
    expect,
    free_port,
    service_env,
    wait_for,
)

__all__ = [
    "CHROMIUM",
    "ROOT",
    "CakeProcess",
    "Served",
    "create_key",
    "expect",
    "free_port",
    "launch_chromium",
    "service_env",
    "sha256_of",
    "start_served",
    "wait_for",
]

CHROMIUM = Path("/usr/bin/chromium")
READY_TIMEOUT_S = 120  # migrations, then the API, on a loaded 2-core machine


def launch_chromium(playwright: Any) -> Any:
    """Headless system chromium; ``--no-sandbox`` only where its sandbox cannot work (root)."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Served:
    """A running ``cake serve``: its URL, an HTTP client, the process and its data folder."""

    def __init__(self, process: CakeProcess, url: str, data_dir: Path) -> None:
        self.process = process
        self.url = url
        self.data_dir = data_dir
        self.client = httpx.Client(base_url=url, timeout=60)

    def stop(self) -> None:
        self.client.close()
        self.process.stop()


def start_served(tmp_path: Path, *extra: str) -> Served:
    """``cake serve`` with its data under ``tmp_path/data`` on a free port, once ready."""
    port = free_port()
    data_dir = tmp_path / "data"
    process = CakeProcess(
        ["serve", "--port", str(port), "--data-dir", str(data_dir), *extra],
        service_env(),
        tmp_path / "serve.log",
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_http(url + "/readyz", READY_TIMEOUT_S)
    except BaseException:
        process.stop()
        raise
    return Served(process, url, data_dir)


def create_key(data_dir: Path, tenant: str) -> str:
    """``cake keys create`` on the database of the embedded service rooted at ``data_dir``:
    from then on that service wants a key on every ``/v1`` request."""
    run = subprocess.run(
        [
            *(sys.executable, "-m", "cake_cli.main", "keys", "create"),
            *("--tenant", tenant, "--data-dir", str(data_dir), "--json"),
        ],
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT_S,
        check=False,
    )
    assert run.returncode == 0, f"cake keys create failed:\n{run.stdout}{run.stderr}"
    return str(json.loads(run.stdout)["key"])
