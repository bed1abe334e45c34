"""The API as a real uvicorn process: a hanging teacher must not block it, a big upload must
not grow it, and it never loads torch."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from api_support import BundledTeacher, LiveServer, live_server
from broken_teachers_support import Hang

CHECK_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(
        tmp_path_factory.mktemp("server"),
        CAKE_TEACHER_CHECK_TIMEOUT_S=str(CHECK_TIMEOUT_S),
        CAKE_MAX_UPLOAD_BYTES=str(1 << 30),
    ) as live:
        yield live


def test_a_hanging_teacher_is_refused_while_the_api_keeps_answering(
    server: LiveServer, tmp_path: Path, wine: BundledTeacher
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


def test_a_big_upload_streams_in_bounded_memory(server: LiveServer, tmp_path: Path) -> None:
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
