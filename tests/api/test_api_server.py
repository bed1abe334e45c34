"""The API as a real uvicorn process: a hanging teacher must not block it, a big upload must
not grow it, and it never loads torch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from api_support import ROOT, BundledTeacher

from cake_shared.db import make_engine
from cake_shared.models import Base

CHECK_TIMEOUT_S = 3


@dataclass
class Server:
    url: str
    pid: int

    def status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("server")
    db_url = f"sqlite:///{root / 'cake.db'}"
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    env = {
        **os.environ,
        "CAKE_DATA_DIR": str(root),
        "CAKE_DATABASE_URL": db_url,
        "CAKE_STORE_URL": f"file://{root / 'store'}",
        "CAKE_TEACHER_CHECK_TIMEOUT_S": str(CHECK_TIMEOUT_S),
        "CAKE_MAX_UPLOAD_BYTES": str(1 << 30),
    }
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "api.main:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the API server did not start")
        time.sleep(0.2)
    yield Server(url, proc.pid)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class Hang(torch.nn.Module):
    """A classifier whose forward pass never returns (and allocates nothing while looping)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            i = i + 1
        return self.fc(x)


def test_a_hanging_teacher_is_refused_while_the_api_keeps_answering(
    server: Server, tmp_path: Path, wine: BundledTeacher
) -> None:
    path = tmp_path / "hang.pt"
    torch.jit.save(torch.jit.script(Hang()), str(path))
    result: dict[str, httpx.Response] = {}

    def upload() -> None:
        with open(path, "rb") as fh:
            result["r"] = httpx.post(
                server.url + "/v1/teachers",
                files={"file": fh},
                data={"input_shape": "[13]"},
                timeout=120,
            )

    start = time.monotonic()
    thread = threading.Thread(target=upload)
    thread.start()
    time.sleep(0.5)
    latencies = []
    while thread.is_alive() and len(latencies) < 5:
        t0 = time.monotonic()
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        latencies.append(time.monotonic() - t0)
        time.sleep(0.2)
    thread.join()
    elapsed = time.monotonic() - start
    assert latencies and max(latencies) < 2.0, latencies
    r = result["r"]
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "teacher_invalid"
    assert f"did not answer within {CHECK_TIMEOUT_S} s on a probe batch" in r.json()["detail"]
    assert CHECK_TIMEOUT_S <= elapsed < CHECK_TIMEOUT_S + 20

    with open(wine.path, "rb") as fh:  # the sandbox recovers for the next upload
        ok = httpx.post(
            server.url + "/v1/teachers", files={"file": fh}, data={"input_shape": "[13]"}
        )
    assert ok.status_code == 201, ok.text


def test_a_big_upload_streams_in_bounded_memory(server: Server, tmp_path: Path) -> None:
    size = 300 << 20
    path = tmp_path / "big.pt"
    with open(path, "wb") as fh:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            fh.write(block)
    with open(path, "rb") as fh:
        r = httpx.post(
            server.url + "/v1/teachers",
            files={"file": ("big.pt", fh)},
            data={"input_shape": "[13]"},
            timeout=120,
        )
    path.unlink()
    assert r.status_code == 422 and r.json()["code"] == "teacher_invalid", r.text
    peak_mib = server.status_kib("VmHWM") / 1024
    assert peak_mib < 250, f"API peak RSS {peak_mib:.0f} MiB for a {size >> 20} MiB upload"
    maps = Path(f"/proc/{server.pid}/maps").read_text()
    assert "libtorch" not in maps, "the API process must not load torch"
