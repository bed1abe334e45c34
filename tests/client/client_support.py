"""Helpers for the client and remote-CLI tests: a real ``cake serve``, the CLI as a subprocess,
and a scripted HTTP server for what a healthy service never does (503s, 429s, broken streams).

The module name is unique on purpose: test folders have no ``__init__.py``, so a generic name
such as ``support`` would clash with another folder's helper in ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
WINE = EXAMPLES / "wine_mlp.pt"
WINE_EVAL = EXAMPLES / "wine_mlp_test.npz"
DIGITS = EXAMPLES / "digits_cnn.pt"
DIGITS_EVAL = EXAMPLES / "digits_cnn_test.npz"

#: A job that finishes in about a second: enough to exercise every phase, not to learn well.
TINY_SPEC: dict[str, Any] = {
    "synthesis": {"num_samples": 300, "steps": 10},
    "training": {"epochs": 2},
}
#: A job that runs for many minutes on a CPU: only ever created to be canceled.
BIG_SPEC: dict[str, Any] = {
    "synthesis": {"num_samples": 200000, "steps": 500},
    "training": {"epochs": 200},
}
READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any ``CAKE_*`` setting (CI may export some),
    with this checkout importable and one thread per torch process (2 busy cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# a real service
# --------------------------------------------------------------------------------------------


@dataclass
class CakeServer:
    url: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGINT, as a person's Ctrl-C: ``cake serve`` stops its worker, then exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_cake_server(root: Path) -> CakeServer:
    """``cake serve`` (SQLite, filesystem broker, a real Celery worker child) on a free port."""
    port = free_port()
    data_dir = root / "data"
    log_path = root / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cake_cli.main",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
            ],
            cwd=ROOT,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = CakeServer(f"http://127.0.0.1:{port}", proc, data_dir, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"cake serve did not become ready:\n{server.log_tail()}")
        time.sleep(0.25)


# --------------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------------


def run_cli(
    *args: str | Path, url: str | None, cwd: Path, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``cake ARGS`` in a subprocess (``python -m cake_cli.main``: no install needed)."""
    env = clean_env(**({"CAKE_URL": url} if url else {}))
    return subprocess.run(
        [sys.executable, "-m", "cake_cli.main", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed command: exactly one, and no traceback anywhere.

    Human progress lines may precede it on stderr (a pipe gets a line per phase); with
    ``--json`` the error line is JSON and the only line.
    """
    text = result.stderr.strip()
    assert "Traceback" not in text and "Traceback" not in result.stdout, text
    errors = [line for line in text.splitlines() if line.startswith(("error:", '{"error"'))]
    assert len(errors) == 1, f"expected one error line on stderr, got:\n{text}"
    assert errors[0] == text.splitlines()[-1], "the error line comes last"
    return errors[0]


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def accuracy(model_path: Path, npz_path: Path) -> float:
    """Top-1 accuracy of a TorchScript classifier on an ``.npz`` with ``x`` and ``y``."""
    data = np.load(npz_path)
    x = torch.from_numpy(np.asarray(data["x"], dtype=np.float32))
    y = torch.from_numpy(np.asarray(data["y"]).astype(np.int64))
    model = torch.jit.load(str(model_path), map_location="cpu")
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    return float((predicted == y).float().mean())


# --------------------------------------------------------------------------------------------
# a scripted HTTP server
# --------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One canned answer. ``cut_after`` announces the whole body but sends only that many
    bytes, then drops the connection (a download broken mid-way)."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    cut_after: int | None = None

    def payload(self) -> tuple[bytes, str]:
        if isinstance(self.body, bytes):
            return self.body, self.content_type or "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type or "text/plain"
        return json.dumps(self.body).encode(), self.content_type or "application/json"


def problem(status: int, code: str, detail: str, **headers: str) -> Reply:
    body = {"type": f"urn:test:{code}", "title": "x", "status": status, "detail": detail}
    body["code"] = code
    return Reply(status, body, dict(headers), "application/problem+json")


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float


Route = list[Reply] | Callable[[Seen], Reply]


class ScriptedServer:
    """A loopback HTTP/1.1 server answering from a script per ``(method, path)``.

    A list of replies is used in order and its last reply repeats; a callable decides per
    request. Every request is recorded in ``seen`` (with its arrival time).
    """

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    def add(self, method: str, path: str, *replies: Reply) -> None:
        self.routes[(method, path)] = list(replies)

    def route(self, method: str, path: str, fn: Callable[[Seen], Reply]) -> None:
        self.routes[(method, path)] = fn

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def _answer(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            route = self.routes.get((seen.method, seen.path))
            if route is None:
                return problem(404, "not_found", f"no route {seen.method} {seen.path}")
            if callable(route):
                return route(seen)
            reply = route[0]
            if len(route) > 1:
                route.pop(0)
            return reply

    def __enter__(self) -> ScriptedServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                seen = Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                )
                reply = owner._answer(seen)
                payload, content_type = reply.payload()
                self.send_response(reply.status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.cut_after is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                if reply.cut_after is not None:
                    self.wfile.write(payload[: reply.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


def job_json(job_id: str = "job_1", status: str = "running", **fields: Any) -> dict[str, Any]:
    """A job object as the service would send it."""
    progress = 1.0 if status == "succeeded" else fields.pop("progress", 0.5)
    body: dict[str, Any] = {
        "id": job_id,
        "object": "job",
        "status": status,
        "phase": "training" if status == "running" else status,
        "progress": progress,
        "teacher_id": "tch_1",
        "eval_dataset_id": None,
        "spec": {"student": {"arch": "mlp", "width": 0.5}},
        "metrics": {},
        "error": None,
        "attempts": 1,
        "metadata": {},
        "cancel_requested": False,
        "created_at": "2024-01-01T00:00:00Z",
        "started_at": None,
        "finished_at": None,
    }
    body.update(fields)
    return body


def teacher_json(teacher_id: str = "tch_1") -> dict[str, Any]:
    return {
        "id": teacher_id,
        "object": "teacher",
        "name": "t",
        "sha256": "0" * 64,
        "size_bytes": 10,
        "input_shape": [13],
        "num_classes": 3,
        "parameters": 42,
        "created_at": "2024-01-01T00:00:00Z",
        "future_field": "kept in raw",
    }
