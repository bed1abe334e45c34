"""Helpers for the API tests (fixtures are in ``conftest.py``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "use httpx2" deprecation notice of starlette's TestClient
    from starlette.testclient import TestClient

from api.main import create_app
from cake_shared.db import make_engine
from cake_shared.models import Base
from cake_shared.services import JobQueue
from cake_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class BundledTeacher:
    """Same attributes as the session fixtures' SavedTeacher."""

    path: Path
    eval_path: Path
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass
class FakeQueue:
    """Stands in for the broker only (the app's ``JobQueue``, passed to ``create_app``):
    records what would have been sent to Celery."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    fail: bool = False
    broker_up: bool = True
    #: False: the broker's client library cannot be imported (as without Celery installed).
    loadable: bool = True

    def enqueue(self, job_id: str, queue: str, countdown: float | None = None) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((job_id, queue))

    def ping(self, timeout: float = 2.0) -> None:
        if not self.loadable:
            raise ImportError("No module named 'celery'")
        if not self.broker_up:
            raise ConnectionError("broker down")

    def depth(self, queue: str) -> int:
        return sum(name == queue for _, name in self.sent)

    def close(self) -> None:
        pass


def make_settings(root: Path, **overrides: Any) -> Settings:
    """Everything explicit, so CAKE_* variables of the environment cannot leak in."""
    values: dict[str, Any] = {
        "data_dir": root,
        "database_url": f"sqlite:///{root / 'cake.db'}",
        "store_url": f"file://{root / 'store'}",
        "broker_url": None,
        "default_queue": "auto",
    }
    values.update(overrides)
    return Settings(**values)


def make_app(root: Path, queue: JobQueue | None = None, **overrides: Any) -> FastAPI:
    """An app on :func:`make_settings` with a migrated database; ``queue`` defaults to the
    settings' real broker."""
    app = create_app(make_settings(root, **overrides), queue=queue)
    Base.metadata.create_all(app.state.ctx.engine)
    return app


def upload_teacher(
    client: TestClient,
    path: Path,
    input_shape: Any,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> Any:
    data = {"input_shape": input_shape if isinstance(input_shape, str) else str(list(input_shape))}
    data.update({k: str(v) for k, v in fields.items()})
    with open(path, "rb") as fh:
        return client.post(
            "/v1/teachers", files={"file": (path.name, fh)}, data=data, headers=headers or {}
        )


def new_job(client: TestClient, teacher: BundledTeacher, headers: dict[str, str]) -> str:
    """A queued job of ``teacher`` (uploaded anew) with the API's defaults; its id."""
    uploaded = upload_teacher(client, teacher.path, list(teacher.input_shape), headers=headers)
    assert uploaded.status_code == 201, uploaded.text
    created = client.post("/v1/jobs", json={"teacher_id": uploaded.json()["id"]}, headers=headers)
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """A problem document with every required field and nothing internal in it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    for key in ("type", "title", "status", "detail", "code"):
        assert key in body, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert_no_leak(response.text)
    return body


def assert_no_leak(text: str) -> None:
    assert "Traceback" not in text
    assert "/tmp" not in text and "pytest-of" not in text
    assert str(ROOT) not in text


@dataclass(frozen=True)
class LiveServer:
    """The API as a real uvicorn process (see :func:`live_server`)."""

    url: str
    root: Path
    pid: int

    def status_kib(self, field: str) -> int:
        """A ``VmRSS``-like field of ``/proc/<pid>/status``, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(root: Path, **env: str) -> Iterator[LiveServer]:
    """``uvicorn api.main:create_app`` on a free port, with a SQLite database and a local store
    under ``root`` and ``env`` (``CAKE_*`` settings) on top of this process's environment;
    up once ``/healthz`` answers (the test fails if it has not within 60 s), stopped on exit.

    For what only a separate process shows: a blocked event loop, the server's own memory, the
    modules it has loaded.
    """
    db_url = f"sqlite:///{root / 'cake.db'}"
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    engine.dispose()
    full_env = {
        **os.environ,
        "CAKE_DATA_DIR": str(root),
        "CAKE_DATABASE_URL": db_url,
        "CAKE_STORE_URL": f"file://{root / 'store'}",
        **env,
    }
    port = _free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", *args],
        cwd=ROOT,
        env=full_env,
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
            proc.wait(10)
            pytest.fail("the API server did not start")
        time.sleep(0.2)
    try:
        yield LiveServer(url, root, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
