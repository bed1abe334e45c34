"""The processes of the service benchmark: servers and workers started here (each stopped with
its whole process tree, also on errors, Ctrl-C and SIGTERM), and the PostgreSQL and Redis
databases of their own that they run on.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from bench.common import REPO_ROOT, console
from bench.service.monitor import descendants, process

SERVICE_VARS = (
    "CAKE_DATA_DIR",
    "CAKE_DATABASE_URL",
    "CAKE_BROKER_URL",
    "CAKE_STORE_URL",
    "CAKE_S3_ENDPOINT_URL",
    "CAKE_S3_REGION",
    "CAKE_WORKER_DEVICE",
)
# Requests go to 127.0.0.1 only: never through a proxy from the environment.
LOCAL_ONLY = {"trust_env": False}


class BenchError(RuntimeError):
    """A benchmark step could not run (a server did not start, an upload was refused...)."""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the benchmark dies, even by SIGKILL (Linux
    ``PR_SET_PDEATHSIG``), so that no server outlives a benchmark that could not clean up."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Managed:
    """A server process started here, logging to a file, stopped with its whole tree."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            cwd=str(REPO_ROOT),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches only this benchmark
            preexec_fn=_die_with_parent,
        )
        self.pid = self.proc.pid
        #: Every process of its tree seen so far, by pid: psutil remembers each one's start
        #: time, so an orphan is found again at stop and a reused pid is never signalled.
        self._known: dict[int, psutil.Process] = {}
        RUNNING.append(self)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def remember_tree(self) -> None:
        """Note the current tree: orphans (no longer below the server) are found again at
        stop."""
        root = process(self.pid)
        for member in ([root] if root is not None else []) + descendants(self.pid):
            self._known.setdefault(member.pid, member)

    def _alive_known(self) -> list[psutil.Process]:
        self.remember_tree()
        alive = []
        for member in self._known.values():
            with contextlib.suppress(psutil.Error):
                # is_running() is False once the pid belongs to another process
                if (
                    member.pid != os.getpid()
                    and member.is_running()
                    and member.status() != psutil.STATUS_ZOMBIE
                ):
                    alive.append(member)
        return alive

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server (it stops its own children in order), then anything left of its
        tree, then SIGKILL."""
        if self.proc.poll() is None:
            self.remember_tree()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            alive = self._alive_known()
            if not alive:
                break
            for member in alive:
                with contextlib.suppress(psutil.Error):
                    member.send_signal(sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and self._alive_known():
                if self.proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(0.1)
                else:
                    time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)


RUNNING: list[Managed] = []


def stop_all() -> None:
    for proc in reversed(list(RUNNING)):
        try:
            proc.stop()
        except Exception as exc:  # keep stopping the others
            console.print(f"[red]could not stop {proc.name} (pid {proc.pid}): {exc}[/]")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(base: dict[str, str], **settings: str | None) -> dict[str, str]:
    """The environment without any inherited ``CAKE_*`` service variable, plus ``settings``."""
    env = {k: v for k, v in base.items() if k not in SERVICE_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH")) if p)
    for key, value in settings.items():
        if value is not None:
            env[key] = value
    return env


def cake(*args: str) -> list[str]:
    """``cake ARGS`` through this interpreter (the console script may belong to another one)."""
    return [
        sys.executable,
        "-c",
        "import sys; from cake_cli.main import main; sys.exit(main())",
        *args,
    ]


def wait_http(proc: Managed, url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2, **LOCAL_ONLY) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            if proc.proc.poll() is not None:
                raise BenchError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name} did not answer {url}:\n{proc.log_tail()}")
            time.sleep(0.2)


def wait_log(proc: Managed, pattern: str, timeout_s: float = 180.0) -> None:
    """Wait until the process's log matches ``pattern`` (e.g. Celery's ``ready.``)."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout_s
    while True:
        if regex.search(proc.log_tail(1 << 20)):
            return
        if proc.proc.poll() is not None:
            raise BenchError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name}: no {pattern!r} in its log:\n{proc.log_tail()}")
        time.sleep(0.2)


def wait_sandbox(
    proc: Managed, base: str, timeout_s: float = 120.0, headers: dict[str, str] | None = None
) -> None:
    """Wait until the API's torch fork server runs (``/v1/architectures`` is computed in it),
    so that start-up work is not measured. ``headers`` carry the API key once one exists (every
    ``/v1`` request then needs it)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=60, headers=headers, **LOCAL_ONLY) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(base + "/v1/architectures").status_code == 200:
                    return
            time.sleep(0.5)
    raise BenchError(f"{proc.name}: /v1/architectures did not answer:\n{proc.log_tail()}")


def start_api(
    name: str,
    env: dict[str, str],
    log_dir: Path,
    workers: int = 1,
    *,
    embedded: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[Managed, str]:
    """``cake serve --no-worker`` (one process), ``python -m uvicorn ... --workers N`` for more,
    or ``cake serve`` with its own worker (``embedded``). Logs at uvicorn's default level
    (``info``, access log on), as ``cake serve`` runs. ``headers``: the API key's, when the
    database has one (the start-up check asks a ``/v1`` route)."""
    port = free_port()
    if workers == 1:
        argv = cake("serve", "--host", "127.0.0.1", "--port", str(port))
        if not embedded:
            argv.append("--no-worker")
    else:
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "info",
        ]
    proc = Managed(name, argv, env, log_dir)
    base = f"http://127.0.0.1:{port}"
    wait_http(proc, base + "/healthz")
    wait_sandbox(proc, base, headers=headers)
    proc.remember_tree()
    return proc, base


#: The tenant whose key the benchmark's clients send with ``--auth key``.
BENCH_TENANT = "bench"
#: Its request rate: high enough that no benchmark client is ever refused, but not 0
#: ("unlimited"), so every request still goes through the per-key rate counter as deployed.
BENCH_REQUESTS_PER_MINUTE = 100_000_000


def _admin(env: dict[str, str], *args: str) -> str:
    """``cake ARGS --json`` (keys, tenants) on the database ``env`` names; its stdout."""
    done = subprocess.run(
        cake(*args, "--json"), env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise BenchError(f"cake {' '.join(args[:2])} failed: {done.stderr[-2000:]}")
    return done.stdout


def create_api_key(env: dict[str, str], tenant: str = BENCH_TENANT) -> str:
    """A new API key for ``tenant`` on the database ``env`` names (``cake keys create``), with
    the tenant's request rate raised so that no benchmark client is rate-limited. Run before the
    server starts: from then on every ``/v1`` request needs the key (API.md's local mode ends).
    Returns the secret, which ``cake keys create --json`` prints once as ``key``."""
    created = _admin(env, "keys", "create", "--tenant", tenant, "--name", "bench.service")
    try:
        secret = json.loads(created.strip().splitlines()[-1])["key"]
    except (IndexError, KeyError, ValueError):
        raise BenchError(f"cake keys create printed no key: {created[-2000:]}") from None
    rate = str(BENCH_REQUESTS_PER_MINUTE)
    _admin(env, "tenants", "set", tenant, "--requests-per-minute", rate)
    return str(secret)


# --------------------------------------------------------------------------------------------
# PostgreSQL and Redis databases of our own
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the local server, dropped afterwards (connections forced off)."""
    import psycopg

    name = f"cake_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL does not answer at {admin_url}: {exc}") from None
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def redis_database(server_url: str) -> Iterator[str]:
    """An empty Redis database (the lowest free number from 1: the tests take the highest),
    marked at once so nobody else takes it, flushed afterwards."""
    import redis

    chosen = None
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{server_url.rstrip('/')}/{db}", socket_connect_timeout=2)
        try:
            if client.dbsize() == 0 and client.set("cake-bench-owner", str(os.getpid()), nx=True):
                chosen = client
                break
        except redis.ConnectionError as exc:
            raise BenchError(f"Redis does not answer at {server_url}: {exc}") from None
        client.close()
    if chosen is None:
        raise BenchError("no empty Redis database (1-15) to use")
    db_number = chosen.connection_pool.connection_kwargs["db"]
    try:
        yield f"{server_url.rstrip('/')}/{db_number}"
    finally:
        chosen.flushdb()
        chosen.close()
