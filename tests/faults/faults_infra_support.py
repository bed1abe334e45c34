"""Helpers of the infrastructure fault tests: a TCP proxy the test can cut and restore, a private
``redis-server`` it can kill and restart empty, and the split deployment (``cake serve
--no-worker`` + ``cake worker``) wired through them.

Why a proxy: killing the shared PostgreSQL or moto would break every other test on the machine;
a proxy between the service and the real server gives the same symptom to the service (its
connections drop, new ones are refused) and is restored in an instant. Why a private Redis: a
flush of the shared one would eat other suites' messages.

The process helpers of the end-to-end tests (``tests/e2e/e2e_support.py``) are reused
(``conftest.py`` here makes them importable).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from e2e_support import (
    CakeProcess,
    descendants,
    free_port,
    kill_pids,
    service_env,
    wait_for,
)

__all__ = [
    "CakeProcess",
    "Outage",
    "RedisServer",
    "TcpProxy",
    "descendants",
    "free_port",
    "job_events",
    "job_row",
    "kill_hard",
    "kill_pids",
    "service_env",
    "sweep_as_another_worker",
    "wait_for",
]


# -- a TCP proxy with an off switch --------------------------------------------------------------
class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream`` until :meth:`cut`, again after :meth:`restore`.

    A cut closes every forwarded connection (the client sees the server hang up, as when the
    server restarts or a link resets) and closes the listening socket, so new connections are
    refused until the restore. ``connections`` counts the connections forwarded so far.
    """

    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self.connections = 0
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.cut_at: float | None = None
        self.outages: list[float] = []  # seconds each cut lasted
        self.restore()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def restore(self) -> None:
        """Listen again (same port) and forward new connections."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        if self.cut_at is not None:
            self.outages.append(time.monotonic() - self.cut_at)
            self.cut_at = None
        self._thread = threading.Thread(
            target=self._accept, args=(listener,), name=f"proxy-{self.port}", daemon=True
        )
        self._thread.start()

    def cut(self) -> None:
        """Drop every forwarded connection and refuse new ones until :meth:`restore`."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self.cut_at = time.monotonic()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _close(sock)

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._live |= {client, upstream}
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while block := src.recv(1 << 16):
                dst.sendall(block)
        except OSError:
            pass
        finally:
            with self._lock:
                self._live.discard(src)
                self._live.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class Outage:
    """Cut ``proxy`` on enter, restore on exit (also when the test fails)."""

    proxy: TcpProxy
    seconds: float = 0.0
    _start: float = field(default=0.0, repr=False)

    def __enter__(self) -> Outage:
        self._start = time.monotonic()
        self.proxy.cut()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxy.restore()
        self.seconds = time.monotonic() - self._start


# -- a private redis-server ------------------------------------------------------------------------
class RedisServer:
    """``redis-server`` on a free port without persistence: a restart comes back empty."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self.ping, 20, f"redis-server on port {self.port}", interval=0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: whatever it held is gone (no persistence)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart_empty(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1

    def keys(self, pattern: str = "*") -> list[bytes]:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=3)
        try:
            return list(client.keys(pattern))
        finally:
            client.close()

    def stop(self) -> None:
        self.kill()


def kill_hard(process: CakeProcess) -> None:
    """SIGKILL a ``cake`` process and everything it started: a crash, nothing runs its cleanup."""
    pids = descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGKILL)
    process.proc.wait(10)
    kill_pids(pids)


# -- reading the truth straight from PostgreSQL (never through a proxy) ----------------------------
def job_row(database_url: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        cur = conn.execute(
            "SELECT status, phase, progress, attempts, heartbeat_at, error FROM jobs WHERE id = %s",
            (job_id,),
        )
        row = cur.fetchone()
        assert row is not None, job_id
        names = [d.name for d in cur.description or ()]
    return dict(zip(names, row, strict=True))


def job_events(database_url: str, job_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        cur = conn.execute(
            "SELECT type, level, message, data FROM job_events WHERE job_id = %s ORDER BY seq",
            (job_id,),
        )
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def sweep_as_another_worker(
    env: dict[str, str], monkeypatch: Any, heartbeat_timeout_s: float
) -> Any:
    """One pass of the sweeper (``worker.sweeper.sweep_once``) in this process, as a second
    worker that still reaches the database and the broker would run it.

    ``env`` holds the ``CAKE_*`` settings to use (the database straight, not through a cut
    proxy); services are built from them for the pass and closed afterwards, so nothing leaks
    into other tests.
    """
    from cake_shared.services import Services
    from cake_shared.settings import Settings
    from worker.sweeper import sweep_once

    with monkeypatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("CAKE_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setenv("CAKE_JOB_HEARTBEAT_TIMEOUT_S", str(heartbeat_timeout_s))
        settings = Settings()
    services = Services.from_settings(settings)
    try:
        return sweep_once(services, lost_after_s=3600)
    finally:
        services.close()
