"""Service benchmarks: polling latency, upload memory and queue latency, against real processes.

Everything runs as it is deployed: the API is a real uvicorn process (``cake serve --no-worker``,
or ``python -m uvicorn api.main:create_app --factory --workers N`` for more than one API
process), jobs run in a real ``cake worker``, state lives in a PostgreSQL database of its own
(created on 127.0.0.1:5432 and dropped at the end) and messages go through an empty Redis
database on 127.0.0.1:6379 (flushed at the end). All traffic goes to 127.0.0.1.

1. **Polling**: ``--clients`` concurrent clients (asyncio, one ``httpx.AsyncClient`` with one
   keep-alive connection per client) poll ``GET /v1/jobs/{id}`` of one finished job for
   ``--duration`` seconds: requests per second, p50, p99, max latency, errors. Two ways to poll:
   back-to-back (interval 0: each client sends its next request as soon as the previous answers;
   a closed loop, so the mean latency is ``clients / throughput`` by Little's law) and paced
   (each client polls every ``interval`` seconds on its own clock, random phase; ``--poll-schedule
   sleep`` waits the interval after each answer instead). Before the rows, a **burst** check:
   ``--clients`` new clients send their first request at the same moment (3 times): does every
   one get an answer? Every row runs on a freshly started server. The load generator shares the
   machine's cores with the server; the CPU each used is reported, and the API's own latency
   histogram (``/metrics``, time inside the app) beside the client's numbers.
2. **Upload**: a TorchScript classifier of ``--upload-mb`` MiB of parameters (``nn.Linear``
   layers on a ``[13]`` input, 3 classes) is streamed to ``POST /v1/teachers`` from a generator
   (multipart body built by hand, never in memory). The API process's resident memory is
   sampled every 20 ms (``/proc/<pid>/statm``) and its kernel peak (``VmHWM``, reset before the
   upload) read after; its children (the torch fork server and the check process it forks) are
   sampled separately.
3. **Queue latency**: a tiny job is created (``POST /v1/jobs``) on an idle worker and polled every
   10 ms until it leaves ``queued``; the time from the POST returning to the first answer that
   says ``running``, and the database's ``started_at - created_at``. One warm-up job first (not
   counted), then ``--jobs`` jobs, each after the previous finished. For two brokers: Redis
   (with PostgreSQL, ``cake serve --no-worker`` + ``cake worker``) and the embedded filesystem
   broker (``cake serve`` with no configuration: SQLite, local store, its own worker).

    python -m bench.service            # full run (about 8 minutes)
    python -m bench.service --quick    # tiny sizes, under a minute

Every process started here is stopped at the end (also on errors, Ctrl-C and SIGTERM): the
process tree of each server, then the PostgreSQL database is dropped and the Redis database
flushed. Servers also get SIGTERM if the benchmark itself is killed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from torch import nn

from bench.common import (
    REPO_ROOT,
    add_common_args,
    command_line,
    console,
    machine_info,
    new_table,
    setup_device,
    write_results,
)

WINE_TEACHER = REPO_ROOT / "examples" / "wine_mlp.pt"
#: A job that finishes in a few seconds on a loaded CPU (the teacher has 13 inputs, 3 classes).
TINY_SPEC: dict[str, Any] = {
    "student": {"arch": "mlp", "width": 0.25},
    "synthesis": {"num_samples": 240, "batch_size": 60, "groups": 3, "steps": 2},
    "training": {"epochs": 1},
}
POLL_TARGET_S = 0.050
RSS_TARGET_MIB = 250.0
QUEUE_TARGET_S = 1.0
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20
#: Connections the polling warm-up opens at once.
WARM_UP_BATCH = 10
#: Simultaneous bursts in the burst check (each with fresh connections).
BURSTS = 3
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


# --------------------------------------------------------------------------------------------
# /proc: process trees, memory, CPU time
# --------------------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list: a child belongs to the thread that
    forked it)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        if text:
            out.extend(int(p) for p in text.split())
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, whatever session it started (``cake serve`` runs its worker
    in a session of its own)."""
    seen: list[int] = []
    stack = children(pid)
    while stack:
        child = stack.pop()
        if child in seen:
            continue
        seen.append(child)
        stack.extend(children(child))
    return seen


def descendants_by_depth(pid: int) -> list[tuple[int, int]]:
    """``(pid, depth)`` of every process below ``pid`` (1: its children, 2: theirs...)."""
    out: list[tuple[int, int]] = []
    stack = [(child, 1) for child in children(pid)]
    while stack:
        child, depth = stack.pop()
        if any(child == p for p, _ in out):
            continue
        out.append((child, depth))
        stack.extend((grandchild, depth + 1) for grandchild in children(child))
    return out


def _stat_fields(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # The command name (field 2) may contain spaces; everything after its ")" is split safely.
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks: with the pid, it names one process for good."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, with that of the children it has reaped
    (0 when it is gone)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size now (0 when the process is gone)."""
    text = _read(f"/proc/{pid}/statm")
    return int(text.split()[1]) * PAGE_SIZE if text else 0


def status_kib(pid: int, key: str) -> int | None:
    text = _read(f"/proc/{pid}/status")
    for line in (text or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak RSS (``VmHWM``) of ``pid`` (``clear_refs`` 5, Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def system_busy_seconds() -> tuple[float, float]:
    """(CPU seconds spent busy by the whole machine, wall seconds), from ``/proc/stat``."""
    text = _read("/proc/stat") or ""
    parts = [int(v) for v in text.splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    # guest time is already counted in user time
    busy = sum(parts[:8]) - idle
    return busy / CLK_TCK, time.monotonic()


@dataclass
class CpuWindow:
    """CPU use over one measurement: the machine's, ours (this process and everything it
    started), and the rest: other people's work on the same cores.

    ``groups`` names process trees to report separately (e.g. the API server's).
    """

    groups: dict[str, int] = field(default_factory=dict)
    _start: dict[int, float] = field(default_factory=dict)
    _group_start: dict[str, dict[int, float]] = field(default_factory=dict)
    _busy0: float = 0.0
    _t0: float = 0.0
    _proc0: float = 0.0

    @staticmethod
    def _tree(pid: int) -> dict[int, float]:
        return {p: cpu_seconds(p) for p in [pid, *descendants(pid)]}

    def __enter__(self) -> CpuWindow:
        self._busy0, self._t0 = system_busy_seconds()
        self._proc0 = time.process_time()
        self._start = self._tree(os.getpid())
        self._group_start = {name: self._tree(pid) for name, pid in self.groups.items()}
        self.result: dict[str, Any] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, t1 = system_busy_seconds()
        wall = max(t1 - self._t0, 1e-9)

        def delta(start: dict[int, float], end: dict[int, float]) -> float:
            return sum(max(0.0, v - start.get(p, 0.0)) for p, v in end.items())

        ours = delta(self._start, self._tree(os.getpid()))
        machine = busy1 - self._busy0
        self.result = {
            "wall_seconds": round(wall, 2),
            "machine_cores": round(machine / wall, 2),
            "ours_cores": round(ours / wall, 2),
            "others_cores": round(max(0.0, machine - ours) / wall, 2),
            # this process alone (the load generator, or the upload client)
            "load_generator_cores": round((time.process_time() - self._proc0) / wall, 2),
        }
        for name, pid in self.groups.items():
            self.result[f"{name}_cores"] = round(
                delta(self._group_start[name], self._tree(pid)) / wall, 2
            )


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------


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
        self._known: dict[int, int | None] = {}
        RUNNING.append(self)

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def remember_tree(self) -> None:
        """Note the current tree (pid -> start time): orphans are found again at stop."""
        for pid in [self.pid, *descendants(self.pid)]:
            self._known.setdefault(pid, start_time(pid))

    def _alive_known(self) -> list[int]:
        self.remember_tree()
        alive = []
        for pid, started in self._known.items():
            now = start_time(pid)
            if now is not None and now == started and pid != os.getpid():
                state = (_stat_fields(pid) or ["Z"])[0]
                if state != "Z":
                    alive.append(pid)
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
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
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


def wait_sandbox(proc: Managed, base: str, timeout_s: float = 120.0) -> None:
    """Wait until the API's torch fork server runs (``/v1/architectures`` is computed in it),
    so that start-up work is not measured."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=60, **LOCAL_ONLY) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(base + "/v1/architectures").status_code == 200:
                    return
            time.sleep(0.5)
    raise BenchError(f"{proc.name}: /v1/architectures did not answer:\n{proc.log_tail()}")


def start_api(
    name: str, env: dict[str, str], log_dir: Path, workers: int = 1, *, embedded: bool = False
) -> tuple[Managed, str]:
    """``cake serve --no-worker`` (one process), ``python -m uvicorn ... --workers N`` for more,
    or ``cake serve`` with its own worker (``embedded``). Logs at uvicorn's default level
    (``info``, access log on), as ``cake serve`` runs."""
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
    wait_sandbox(proc, base)
    proc.remember_tree()
    return proc, base


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


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None for none)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    value = seconds * 1000
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms"


def _server_histogram(client: httpx.Client, base: str) -> dict[float, float] | None:
    """Cumulative bucket counts of the API's own latency histogram for ``GET /v1/jobs/{id}``
    (from ``/metrics``: time inside the app, without the wait before uvicorn hands the request
    over)."""
    try:
        from prometheus_client.parser import text_string_to_metric_families

        text = client.get(base + "/metrics").text
        buckets: dict[float, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "cake_http_request_duration_seconds":
                continue
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name.endswith("_bucket")
                    and labels.get("route") == "/v1/jobs/{id}"
                    and labels.get("method") == "GET"
                ):
                    buckets[float(labels["le"])] = sample.value
        return buckets
    except Exception:
        return None


def _histogram_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return {"requests": 0}

    def upper(q: float) -> float:
        for b, c in zip(bounds, counts, strict=True):
            if c >= q * total:
                return b
        return math.inf

    under = next((c for b, c in zip(bounds, counts, strict=True) if b >= POLL_TARGET_S), total)
    return {
        "requests": int(total),
        "p50_at_most_s": upper(0.5),
        "p99_at_most_s": upper(0.99),
        "share_under_50ms": round(under / total, 4),
        "buckets": {str(b): int(c) for b, c in zip(bounds, counts, strict=True)},
    }


# --------------------------------------------------------------------------------------------
# 1. polling
# --------------------------------------------------------------------------------------------


async def _poll_load(
    url: str,
    clients: int,
    duration: float,
    interval: float,
    timeout: float,
    after_warm_up: Callable[[], Any] | None = None,
    schedule: str = "ticker",
) -> dict[str, Any]:
    """``clients`` pollers, each with its own ``httpx.AsyncClient`` and keep-alive connection.

    (One shared client with a pool of ``clients`` connections costs the load generator about
    13 ms of CPU per request at 200 connections, httpcore's pool bookkeeping growing with the
    pool: the generator, not the server, would be measured.)
    """
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lags: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        pool = [
            await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, timeout=timeout, **LOCAL_ONLY)
            )
            for _ in range(clients)
        ]
        # Open every connection first (not measured; a poller keeps its connection), a few at
        # a time: a burst of simultaneous first requests is a check of its own (run_burst).
        warm: list[Any] = []
        for i in range(0, clients, WARM_UP_BATCH):
            batch = pool[i : i + WARM_UP_BATCH]
            warm += await asyncio.gather(*(c.get(url) for c in batch), return_exceptions=True)
        warm_errors = Counter(
            type(w).__name__ if isinstance(w, BaseException) else f"HTTP {w.status_code}"
            for w in warm
            if isinstance(w, BaseException) or w.status_code != 200
        )
        before = await asyncio.to_thread(after_warm_up) if after_warm_up else None
        # No collector pauses in the load generator while it measures (they would show up as
        # server latency): what exists now is frozen, and little is allocated in 30 s.
        gc.collect()
        gc.freeze()
        gc.disable()
        start = time.perf_counter()
        end = start + duration
        completed = 0

        async def one_client(client: httpx.AsyncClient) -> None:
            nonlocal completed
            # spread the pollers over the interval, as independent scripts are
            next_at = start + random.uniform(0, interval) if interval > 0 else start
            while True:
                if interval > 0:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                t0 = time.perf_counter()  # uvloop's loop.time() only has 1 ms steps
                if t0 >= end:
                    return
                try:
                    response = await client.get(url)
                    code = response.status_code
                    statuses[str(code)] += 1
                    if code != 200:
                        errors[f"HTTP {code}"] += 1
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                if t1 <= end:
                    completed += 1
                if interval <= 0:
                    continue
                if schedule == "sleep":  # wait the interval after each answer
                    next_at = t1 + interval
                else:  # on a fixed clock, skipping the ticks missed while waiting
                    next_at += interval
                    if next_at < t1:
                        next_at += math.ceil((t1 - next_at) / interval) * interval

        async def lag_probe() -> None:
            """How late the client's own event loop wakes up: a delay every request shares."""
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(max(0.0, time.perf_counter() - t0 - 0.01))

        try:
            await asyncio.gather(lag_probe(), *(one_client(c) for c in pool))
        finally:
            gc.enable()
            gc.unfreeze()
        elapsed = max(time.perf_counter() - start, 1e-9)
    latencies.sort()
    lags.sort()
    return {
        "requests": len(latencies),
        "completed_in_window": completed,
        "requests_per_second": round(completed / duration, 1),
        "p50_s": percentile(latencies, 0.50),
        "p90_s": percentile(latencies, 0.90),
        "p99_s": percentile(latencies, 0.99),
        "max_s": latencies[-1] if latencies else None,
        "mean_s": (sum(latencies) / len(latencies)) if latencies else None,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "statuses": dict(statuses),
        "warm_up_errors": dict(warm_errors),
        "after_warm_up": before,
        "client_loop_lag_p50_s": percentile(lags, 0.50),
        "client_loop_lag_p99_s": percentile(lags, 0.99),
        "client_loop_lag_max_s": lags[-1] if lags else None,
        "elapsed_seconds": round(elapsed, 2),
    }


async def _bursts(url: str, clients: int, bursts: int, timeout: float) -> list[dict[str, Any]]:
    out = []
    for _ in range(bursts):
        async with contextlib.AsyncExitStack() as stack:
            pool = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        limits=httpx.Limits(max_connections=1), timeout=timeout, **LOCAL_ONLY
                    )
                )
                for _ in range(clients)
            ]

            async def one(client: httpx.AsyncClient) -> tuple[str, float]:
                t0 = time.perf_counter()
                try:
                    r = await client.get(url)
                    kind = "ok" if r.status_code == 200 else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    kind = type(exc).__name__
                return kind, time.perf_counter() - t0

            results = await asyncio.gather(*(one(c) for c in pool))
        times = sorted(t for _, t in results)
        kinds = Counter(k for k, _ in results)
        out.append(
            {
                "answered": kinds.pop("ok", 0),
                "errors": dict(kinds),
                "p50_s": percentile(times, 0.5),
                "last_s": times[-1],
            }
        )
        await asyncio.sleep(1.0)
    return out


def run_burst(
    api: Managed, base: str, job_id: str, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    """``clients`` new clients send their first GET at the same moment, ``BURSTS`` times:
    does every one get an answer, and how long does the last wait?"""
    url = f"{base}/v1/jobs/{job_id}"
    console.print(
        f"  burst: {args.clients} simultaneous GETs on fresh connections x{BURSTS}, {workers} "
        "API process(es) ...",
        end="",
        highlight=False,
    )
    with httpx.Client(timeout=30, **LOCAL_ONLY) as client:
        if client.get(url).status_code != 200:
            raise BenchError(f"GET {url} does not answer 200")
    with CpuWindow(groups={"server": api.pid}) as cpu:
        bursts = asyncio.run(_bursts(url, args.clients, BURSTS, args.timeout))
    server_log = api.log_tail(1 << 26)
    result = {
        "api_processes": workers,
        "clients": args.clients,
        "bursts": bursts,
        "errors": sum(sum(b["errors"].values()) for b in bursts),
        "last_answer_s": max(b["last_s"] for b in bursts),
        "timeout_s": args.timeout,
        "server_pool_timeouts_logged": server_log.count("QueuePool limit of size"),
        "cpu": cpu.result,
    }
    console.print(
        " "
        + "; ".join(
            f"{b['answered']} answered, last after {ms(b['last_s'])}"
            + (f", errors {b['errors']}" if b["errors"] else "")
            for b in bursts
        )
        + (
            f" (server logged {result['server_pool_timeouts_logged']} DB pool timeouts)"
            if result["server_pool_timeouts_logged"]
            else ""
        ),
        highlight=False,
    )
    return result


def run_polling(
    api: Managed, base: str, job_id: str, workers: int, args: argparse.Namespace, interval: float
) -> dict[str, Any]:
    url = f"{base}/v1/jobs/{job_id}"
    if interval <= 0:
        mode = "back-to-back"
    elif args.poll_schedule == "sleep":
        mode = f"sleeping {interval:g} s after each answer"
    else:
        mode = f"every {interval:g} s"
    console.print(
        f"  polling: {args.clients} clients {mode}, {workers} API process(es), "
        f"{args.duration:g} s ...",
        end="",
        highlight=False,
    )
    with httpx.Client(timeout=30, **LOCAL_ONLY) as client:
        if client.get(url).status_code != 200:
            raise BenchError(f"GET {url} does not answer 200")

    def histogram() -> dict[float, float] | None:
        with httpx.Client(timeout=10, **LOCAL_ONLY) as client:
            return _server_histogram(client, base)

    api.remember_tree()
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
        client_loop = "uvloop"
    except ImportError:
        runner = asyncio.run
        client_loop = "asyncio"
    with CpuWindow(groups={"server": api.pid}) as cpu:
        result = runner(
            _poll_load(
                url,
                args.clients,
                args.duration,
                interval,
                args.timeout,
                # the API's own histogram is per process: read it only with one process
                histogram if workers == 1 else None,
                args.poll_schedule,
            )
        )
    hist = None
    hist_before = result.pop("after_warm_up")
    if hist_before is not None:
        with httpx.Client(timeout=10, **LOCAL_ONLY) as client:
            hist_after = _server_histogram(client, base)
        if hist_after:
            hist = _histogram_summary(hist_before, hist_after)
    server_log = api.log_tail(1 << 26)
    result.update(
        {
            "api_processes": workers,
            "server_command": "cake serve --no-worker"
            if workers == 1
            else f"python -m uvicorn api.main:create_app --factory --workers {workers}",
            # what the server logged meanwhile: unhandled errors, and among them requests that
            # waited the database pool's whole timeout for a connection
            "server_errors_logged": server_log.count("unhandled error in "),
            "server_pool_timeouts_logged": server_log.count("QueuePool limit of size"),
            "clients": args.clients,
            "interval_s": interval,
            "schedule": args.poll_schedule if interval > 0 else "back-to-back",
            "mode": mode,
            "duration_s": args.duration,
            "client_event_loop": client_loop,
            "cpu": cpu.result,
            "server_side": hist,
        }
    )
    console.print(
        f" {result['requests_per_second']:.0f} req/s, p50 {ms(result['p50_s'])}, "
        f"p99 {ms(result['p99_s'])}, max {ms(result['max_s'])}, {result['errors']} errors "
        f"(server {cpu.result['server_cores']:.2f} cores, load generator "
        f"{cpu.result['load_generator_cores']:.2f}, others {cpu.result['others_cores']:.2f})",
        highlight=False,
    )
    return result


# --------------------------------------------------------------------------------------------
# 2. upload
# --------------------------------------------------------------------------------------------


def build_big_teacher(path: Path, mib: float, layers: int = 6) -> dict[str, Any]:
    """A scripted MLP classifier on ``[13]`` inputs (3 classes) with about ``mib`` MiB of
    float32 parameters: ``Linear(13, W)``, ``layers`` x ``Linear(W, W)``, ``Linear(W, 3)``."""
    target = mib * MIB / 4
    width = max(8, int(math.sqrt(target / layers)))
    torch.manual_seed(0)
    mods: list[nn.Module] = [nn.Linear(13, width), nn.ReLU()]
    with torch.no_grad():
        for _ in range(layers):
            layer = nn.Linear(width, width)
            # small weights keep the logits finite through many layers (and init is fast)
            layer.weight.normal_(0.0, 1.0 / math.sqrt(width))
            layer.bias.zero_()
            mods += [layer, nn.ReLU()]
    mods.append(nn.Linear(width, 3))
    model = nn.Sequential(*mods).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    parameters = sum(p.numel() for p in model.parameters())
    torch.jit.save(torch.jit.script(model), str(path))
    del model
    return {"width": width, "layers": layers + 2, "parameters": parameters}


class _Body:
    """A multipart/form-data body streamed from disk in 1 MiB chunks (never whole in memory);
    notes when its last byte was handed to the client."""

    def __init__(self, path: Path, fields: dict[str, str], chunk: int = MIB) -> None:
        self.path = path
        self.chunk = chunk
        self.boundary = f"cake-bench-{uuid.uuid4().hex}"
        pre = b""
        for name, value in fields.items():
            pre += (
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n"
            ).encode()
        pre += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        self.pre = pre
        self.post = f"\r\n--{self.boundary}--\r\n".encode()
        self.length = len(pre) + path.stat().st_size + len(self.post)
        self.sent_at: float | None = None

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __iter__(self) -> Iterator[bytes]:
        yield self.pre
        with open(self.path, "rb") as fh:
            while block := fh.read(self.chunk):
                yield block
        yield self.post
        self.sent_at = time.perf_counter()


class RssSampler(threading.Thread):
    """Samples the resident memory of a process and of its descendants every ``period_s``."""

    def __init__(self, pid: int, period_s: float = 0.02) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.period_s = period_s
        self.stop_event = threading.Event()
        self.samples = 0
        self.peak_api = 0
        self.peak_children_sum = 0
        self.peak_by_depth: dict[int, int] = {}  # 1: the fork server, 2: the check processes
        self.trace: list[tuple[float, int, int]] = []
        self._kids: list[tuple[int, int]] = []
        self._kids_at = 0.0

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop_event.is_set():
            now = time.perf_counter()
            if now - self._kids_at > 0.1:  # the tree changes rarely; reading it costs more
                self._kids = descendants_by_depth(self.pid)
                self._kids_at = now
            api = rss_bytes(self.pid)
            kids = 0
            for kid, depth in self._kids:
                value = rss_bytes(kid)
                kids += value
                self.peak_by_depth[depth] = max(self.peak_by_depth.get(depth, 0), value)
            self.peak_api = max(self.peak_api, api)
            self.peak_children_sum = max(self.peak_children_sum, kids)
            self.samples += 1
            if not self.trace or now - self.trace[-1][0] - t0 >= 0.25:
                self.trace.append((round(now - t0, 3), api // MIB, kids // MIB))
            self.stop_event.wait(self.period_s)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)


def run_upload(api: Managed, base: str, teacher_path: Path, built: dict[str, Any]) -> dict:
    size = teacher_path.stat().st_size
    console.print(
        f"  upload: {size / MIB:.0f} MiB TorchScript teacher ({built['parameters']:,} "
        f"parameters) to {api.name} ...",
        end="",
        highlight=False,
    )
    time.sleep(1.0)  # let the API settle after start-up
    api.remember_tree()
    baseline = rss_bytes(api.pid)
    hwm_before = status_kib(api.pid, "VmHWM")
    reset = reset_peak_rss(api.pid)
    body = _Body(teacher_path, {"input_shape": "[13]", "name": "bench-big"})
    sampler = RssSampler(api.pid)
    sampler.start()
    started = time.perf_counter()
    try:
        with (
            CpuWindow(groups={"server": api.pid}) as cpu,
            httpx.Client(timeout=600, **LOCAL_ONLY) as client,
        ):
            response = client.post(
                base + "/v1/teachers",
                content=iter(body),
                headers={"Content-Type": body.content_type, "Content-Length": str(body.length)},
            )
        answered = time.perf_counter()
    finally:
        sampler.finish()
    hwm_after = status_kib(api.pid, "VmHWM")
    wall = answered - started
    sent = (body.sent_at or answered) - started
    payload = response.json() if response.headers.get("content-type", "").endswith("json") else {}
    result = {
        "file_bytes": size,
        "file_mib": round(size / MIB, 1),
        "model": built,
        "status": response.status_code,
        "response": {
            k: payload.get(k) for k in ("id", "code", "detail", "num_classes", "parameters")
        },
        "wall_seconds": round(wall, 2),
        "mib_per_second": round(size / MIB / wall, 1),
        "body_sent_seconds": round(sent, 2),
        "body_mib_per_second": round(size / MIB / max(sent, 1e-9), 1),
        "after_body_seconds": round(wall - sent, 2),
        "api_rss_before_mib": round(baseline / MIB, 1),
        "api_rss_peak_sampled_mib": round(sampler.peak_api / MIB, 1),
        "api_vmhwm_reset": reset,
        "api_vmhwm_before_mib": round(hwm_before / 1024, 1) if hwm_before else None,
        "api_vmhwm_after_mib": round(hwm_after / 1024, 1) if hwm_after else None,
        "children_rss_peak_sum_mib": round(sampler.peak_children_sum / MIB, 1),
        # the API's children are its torch fork server; the check processes are forked from it
        "fork_server_rss_peak_mib": round(sampler.peak_by_depth.get(1, 0) / MIB, 1),
        "check_process_rss_peak_mib": round(sampler.peak_by_depth.get(2, 0) / MIB, 1),
        "rss_samples": sampler.samples,
        "rss_trace_mib": sampler.trace,  # (seconds, API MiB, children MiB) every 0.25 s
        "cpu": cpu.result,
    }
    # The peak that counts: the kernel's own (exact) if it could be reset, else the sampled one.
    exact = result["api_vmhwm_after_mib"] if reset else None
    result["api_rss_peak_mib"] = max(v for v in (exact, result["api_rss_peak_sampled_mib"]) if v)
    console.print(
        f" HTTP {response.status_code} in {wall:.1f} s ({result['mib_per_second']:.0f} MiB/s); "
        f"API RSS {result['api_rss_before_mib']:.0f} -> peak {result['api_rss_peak_mib']:.0f} "
        f"MiB; check process peak {result['check_process_rss_peak_mib']:.0f} MiB",
        highlight=False,
    )
    if response.status_code != 201:
        raise BenchError(f"the upload was refused: {response.status_code} {response.text[:500]}")
    with httpx.Client(timeout=60, **LOCAL_ONLY) as client:
        client.delete(f"{base}/v1/teachers/{payload['id']}")
    return result


# --------------------------------------------------------------------------------------------
# 3. queue latency
# --------------------------------------------------------------------------------------------


def upload_small_teacher(base: str) -> str:
    with httpx.Client(timeout=120, **LOCAL_ONLY) as client, open(WINE_TEACHER, "rb") as fh:
        r = client.post(
            base + "/v1/teachers",
            files={"file": ("wine_mlp.pt", fh, "application/octet-stream")},
            data={"input_shape": "[13]", "name": "bench-wine"},
        )
    if r.status_code != 201:
        raise BenchError(f"the wine teacher was refused: {r.status_code} {r.text[:500]}")
    return str(r.json()["id"])


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_queue(
    base: str, teacher_id: str, jobs: int, worker: Managed, label: str, job_timeout_s: float
) -> dict[str, Any]:
    console.print(f"  queue latency ({label}): 1 warm-up + {jobs} jobs ", end="", highlight=False)
    records: list[dict[str, Any]] = []
    last_job = None
    with httpx.Client(timeout=30, **LOCAL_ONLY) as client:
        for i in range(jobs + 1):
            body = {"teacher_id": teacher_id, **TINY_SPEC, "seed": i, "metadata": {"bench": i}}
            posted = time.perf_counter()
            r = client.post(base + "/v1/jobs", json=body)
            returned = time.perf_counter()
            if r.status_code != 202:
                raise BenchError(f"POST /v1/jobs answered {r.status_code}: {r.text[:500]}")
            job_id = r.json()["id"]
            url = f"{base}/v1/jobs/{job_id}"
            seen = seen_sent = None
            polls = 0
            job: dict[str, Any] = {}
            while time.perf_counter() - returned < job_timeout_s:
                sent = time.perf_counter()
                job = client.get(url).json()
                polls += 1
                if job["status"] != "queued":
                    seen, seen_sent = time.perf_counter(), sent
                    break
                time.sleep(0.01)
            if seen is None:
                raise BenchError(
                    f"job {job_id} still queued after {job_timeout_s:g} s:\n{worker.log_tail()}"
                )
            status_seen = job["status"]
            deadline = time.perf_counter() + job_timeout_s
            while job["status"] in ("queued", "running") and time.perf_counter() < deadline:
                time.sleep(0.1)
                job = client.get(url).json()
            if job["status"] in ("queued", "running"):
                raise BenchError(f"job {job_id} did not finish:\n{worker.log_tail()}")
            created, started = _parse_time(job["created_at"]), _parse_time(job["started_at"])
            records.append(
                {
                    "job_id": job_id,
                    "warm_up": i == 0,
                    "post_s": returned - posted,
                    "to_running_s": seen - returned,
                    "to_running_lower_bound_s": max(0.0, seen_sent - returned - 0.01),
                    "db_created_to_started_s": (started - created) if created and started else None,
                    "status_seen": status_seen,
                    "final_status": job["status"],
                    "error": job.get("error"),
                    "polls": polls,
                }
            )
            last_job = job_id
            console.print("." if job["status"] == "succeeded" else "x", end="")
            time.sleep(0.5)  # the worker goes back to waiting on the broker: idle
    console.print()
    counted = [r for r in records if not r["warm_up"]]
    lat = sorted(r["to_running_s"] for r in counted)
    db = sorted(r["db_created_to_started_s"] for r in counted if r["db_created_to_started_s"])
    failed = [r for r in counted if r["final_status"] != "succeeded"]
    result = {
        "broker": label,
        "jobs": len(counted),
        "median_s": percentile(lat, 0.5) if lat else None,
        "max_s": lat[-1] if lat else None,
        "min_s": lat[0] if lat else None,
        "db_median_s": percentile(db, 0.5) if db else None,
        "db_max_s": db[-1] if db else None,
        "post_median_s": percentile(sorted(r["post_s"] for r in counted), 0.5) if counted else None,
        "warm_up_s": records[0]["to_running_s"],
        "jobs_not_succeeded": len(failed),
        "failures": [r["error"] for r in failed][:3],
        "spec": TINY_SPEC,
        "records": records,
        "last_job": last_job,
    }
    console.print(
        f"    POST -> running: median {ms(result['median_s'])}, max {ms(result['max_s'])} "
        f"(database started_at - created_at: median {ms(result['db_median_s'])}, max "
        f"{ms(result['db_max_s'])}; warm-up job {ms(result['warm_up_s'])}); "
        f"{len(failed)} of {len(counted)} jobs did not succeed",
        highlight=False,
    )
    return result


# --------------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------------


def run_postgres_redis(args: argparse.Namespace, workdir: Path, device: torch.device) -> dict:
    """Upload, Redis queue latency and polling, on PostgreSQL + Redis."""
    out: dict[str, Any] = {"burst": [], "polling": [], "upload": None, "queue": []}
    with (
        postgres_database(args.pg_admin_url) as db_url,
        redis_database(args.redis_url) as broker_url,
    ):
        data_dir = workdir / "pg"
        data_dir.mkdir()
        env = service_env(
            dict(os.environ),
            CAKE_DATA_DIR=str(data_dir),
            CAKE_DATABASE_URL=db_url,
            CAKE_BROKER_URL=broker_url,
            CAKE_STORE_URL=f"file://{data_dir / 'store'}",
            CAKE_WORKER_DEVICE=str(device),
        )
        console.print(f"[bold]PostgreSQL + Redis[/] ({db_url.rsplit('/', 1)[1]}, {broker_url})")
        subprocess.run(
            cake("db", "upgrade"), env=env, cwd=REPO_ROOT, check=True, capture_output=True
        )
        api, base = start_api("api-pg", env, workdir)
        job_id = None
        try:
            if "upload" in args.parts:
                teacher_path = workdir / "big_teacher.pt"
                console.print(f"  building a {args.upload_mb:g} MiB teacher ...", highlight=False)
                built = build_big_teacher(teacher_path, args.upload_mb)
                out["upload"] = run_upload(api, base, teacher_path, built)
                teacher_path.unlink()
            teacher_id = upload_small_teacher(base)
            if "queue" in args.parts and "redis" in args.brokers:
                worker_env = dict(env)
                if args.threads:
                    worker_env["OMP_NUM_THREADS"] = str(args.threads)
                worker = Managed(
                    "worker-redis", cake("worker", "--queues", "cpu,gpu"), worker_env, workdir
                )
                try:
                    wait_log(worker, r"@\S+ ready\.")
                    time.sleep(1.0)
                    result = run_queue(
                        base, teacher_id, args.jobs, worker, "redis", args.job_timeout
                    )
                    result["setup"] = "cake serve --no-worker + cake worker, PostgreSQL, Redis"
                    out["queue"].append(result)
                    job_id = result["last_job"]
                finally:
                    worker.stop()
            if "polling" in args.parts:
                if job_id is None:  # a job that stays queued (no worker) is fine to poll
                    with httpx.Client(timeout=30, **LOCAL_ONLY) as client:
                        r = client.post(
                            base + "/v1/jobs", json={"teacher_id": teacher_id, **TINY_SPEC}
                        )
                    job_id = r.json()["id"]
                api.stop()
                # Every polling row gets a fresh server: a row that overloads it must not
                # spoil the next one.
                for workers in args.api_workers:
                    api, base = start_api(f"api-burst-{workers}p", env, workdir, workers)
                    try:
                        out["burst"].append(run_burst(api, base, job_id, workers, args))
                    finally:
                        api.stop()
                    for interval in args.poll_intervals:
                        name = f"api-poll-{workers}p-{interval:g}s"
                        api, base = start_api(name, env, workdir, workers)
                        try:
                            out["polling"].append(
                                run_polling(api, base, job_id, workers, args, interval)
                            )
                        finally:
                            api.stop()
        finally:
            api.stop()
    return out


def run_embedded(args: argparse.Namespace, workdir: Path, device: torch.device) -> dict:
    """``cake serve`` with no configuration (SQLite, local store, filesystem broker, its own
    worker): queue latency on the filesystem broker."""
    data_dir = workdir / "embedded"
    env = service_env(dict(os.environ), CAKE_DATA_DIR=str(data_dir), CAKE_WORKER_DEVICE=str(device))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    console.print("[bold]Embedded[/] (cake serve: SQLite, local store, filesystem broker)")
    api, base = start_api("api-embedded", env, workdir, embedded=True)
    try:
        wait_log(api, r"@\S+ ready\.")
        time.sleep(1.0)
        teacher_id = upload_small_teacher(base)
        result = run_queue(base, teacher_id, args.jobs, api, "filesystem", args.job_timeout)
        result["setup"] = "cake serve (embedded worker), SQLite, filesystem broker"
        return result
    finally:
        api.stop()


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "[dim]info[/]"
    return "[green]PASS[/]" if ok else "[red]FAIL[/]"


def _polling_details(p: dict[str, Any]) -> str:
    cpu = p["cpu"]
    parts = [
        f"{p['requests_per_second']:,.0f} req/s, p50 {ms(p['p50_s'])}, max {ms(p['max_s'])}, "
        f"{p['errors']} errors"
        + (
            f" ({', '.join(f'{k} x{v}' for k, v in p['error_kinds'].items())})"
            if p["errors"]
            else ""
        )
    ]
    if p.get("warm_up_errors"):
        parts.append(f"warm-up burst errors {sum(p['warm_up_errors'].values())}")
    if p.get("server_pool_timeouts_logged"):
        parts.append(f"server logged {p['server_pool_timeouts_logged']} DB pool timeouts")
    parts.append(
        f"CPU cores: server {cpu['server_cores']:.2f}, load generator "
        f"{cpu['load_generator_cores']:.2f}, others {cpu['others_cores']:.2f}"
    )
    s = p.get("server_side")
    if s and s.get("requests"):
        parts.append(
            f"in the app: p50 <= {ms(s['p50_at_most_s'])}, p99 <= {ms(s['p99_at_most_s'])}"
        )
    return "; ".join(parts)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for b in results.get("burst", []):
        n = b["api_processes"]
        answered = sum(x["answered"] for x in b["bursts"])
        total = b["clients"] * len(b["bursts"])
        details = "; ".join(
            f"last answer {ms(x['last_s'])}"
            + (f", {sum(x['errors'].values())} errors" if x["errors"] else "")
            for x in b["bursts"]
        )
        if b["server_pool_timeouts_logged"]:
            details += f"; server logged {b['server_pool_timeouts_logged']} DB pool timeouts"
        rows.append(
            {
                "check": "burst of GET /v1/jobs/{id}: answered",
                "setup": f"{b['clients']} new clients at once x{len(b['bursts'])}, {n} API "
                f"process{'es' if n > 1 else ''}",
                "measured": f"{answered}/{total}",
                "details": details,
                "target": "all, 0 errors",
                "pass": answered == total,
            }
        )
    for p in results.get("polling", []):
        n = p["api_processes"]
        rows.append(
            {
                "check": "poll GET /v1/jobs/{id}: p99",
                "setup": f"{p['clients']} clients {p['mode']}, {n} API process"
                f"{'es' if n > 1 else ''}, PostgreSQL",
                "measured": ms(p["p99_s"]),
                "details": _polling_details(p),
                "target": "< 50 ms, 0 errors",
                "pass": p["p99_s"] is not None and p["p99_s"] < POLL_TARGET_S and p["errors"] == 0,
            }
        )
    u = results.get("upload")
    if u:
        rows.append(
            {
                "check": "upload: API process peak RSS",
                "setup": f"{u['file_mib']:.0f} MiB TorchScript teacher, streamed",
                "measured": f"{u['api_rss_peak_mib']:.0f} MiB",
                "details": f"before {u['api_rss_before_mib']:.0f} MiB; HTTP {u['status']} in "
                f"{u['wall_seconds']:.1f} s = {u['mib_per_second']:.0f} MiB/s (body sent in "
                f"{u['body_sent_seconds']:.1f} s, then check + store "
                f"{u['after_body_seconds']:.1f} s); children: check process peak "
                f"{u['check_process_rss_peak_mib']:.0f} MiB, fork server "
                f"{u['fork_server_rss_peak_mib']:.0f} MiB, together "
                f"{u['children_rss_peak_sum_mib']:.0f} MiB (fork-shared pages counted twice)",
                "target": f"< {RSS_TARGET_MIB:.0f} MiB",
                "pass": u["api_rss_peak_mib"] < RSS_TARGET_MIB and u["status"] == 201,
            }
        )
    for q in results.get("queue", []):
        for stat in ("median", "max"):
            value = q[f"{stat}_s"]
            details = f"database started_at - created_at {stat} {ms(q[f'db_{stat}_s'])}"
            if stat == "median":
                details += (
                    f"; warm-up job {ms(q['warm_up_s'])} (not counted); "
                    f"{q['jobs_not_succeeded']} jobs did not succeed"
                )
            rows.append(
                {
                    "check": f"POST /v1/jobs -> running: {stat}",
                    "setup": f"{q['broker']} broker, idle worker, {q['jobs']} jobs: {q['setup']}",
                    "measured": ms(value),
                    "details": details,
                    "target": "< 1 s",
                    "pass": value is not None and value < QUEUE_TARGET_S,
                }
            )
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    table = new_table(
        "Service benchmarks (real uvicorn API, cake worker, PostgreSQL, Redis; all on 127.0.0.1)",
        ["check", "setup", ("measured", "right"), ("target", "right"), "result", "details"],
    )
    for row in rows:
        table.add_row(
            row["check"],
            row["setup"],
            row["measured"],
            row["target"],
            verdict(row["pass"]),
            row["details"],
        )
    console.print(table)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service", description=__doc__.splitlines()[0]
    )
    add_common_args(parser)
    parser.add_argument("--duration", type=float, help="seconds of polling per row (default 30)")
    parser.add_argument("--clients", type=int, help="concurrent polling clients (default 200)")
    parser.add_argument(
        "--api-workers",
        type=_int_list,
        help="API processes per polling run, comma list (default 1,2: 1 is `cake serve "
        "--no-worker`, N > 1 `uvicorn --workers N`)",
    )
    parser.add_argument(
        "--poll-intervals",
        type=_float_list,
        help="seconds each client waits after an answer, comma list; 0 = back-to-back "
        "(default 0,1)",
    )
    parser.add_argument(
        "--poll-schedule",
        choices=("ticker", "sleep"),
        default="ticker",
        help="paced pollers: ticker = on a fixed clock (every interval, random phase); sleep = "
        "the interval after each answer (pollers then bunch up behind any slow answer)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--upload-mb", type=float, help="teacher size in MiB (default 500)")
    parser.add_argument("--jobs", type=int, help="queue-latency jobs per broker (default 10)")
    parser.add_argument("--job-timeout", type=float, default=180.0, help="seconds per job")
    parser.add_argument(
        "--parts", default="polling,upload,queue", help="comma list of: polling, upload, queue"
    )
    parser.add_argument(
        "--brokers", default="redis,filesystem", help="queue-latency brokers: redis, filesystem"
    )
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="where to create (and drop) the benchmark's database",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379", help="Redis server")
    parser.add_argument(
        "--keep-logs", type=Path, help="copy the servers' logs into this folder at the end"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "duration": 3.0 if quick else 30.0,
        "clients": 20 if quick else 200,
        "api_workers": [1] if quick else [1, 2],
        "poll_intervals": [0.0, 0.2] if quick else [0.0, 1.0],
        "upload_mb": 20.0 if quick else 500.0,
        "jobs": 2 if quick else 10,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if set(args.parts) - {"polling", "upload", "queue"}:
        parser.error("--parts takes polling, upload, queue")
    if set(args.brokers) - {"redis", "filesystem"}:
        parser.error("--brokers takes redis, filesystem")
    if any(w < 1 for w in args.api_workers) or args.clients < 1 or args.duration <= 0:
        parser.error("--api-workers, --clients and --duration must be positive")
    return args


def _on_signal(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args.device, args.threads)
    info = machine_info(device)
    previous = signal.signal(signal.SIGTERM, _on_signal)
    started = time.perf_counter()
    console.print(
        f"[bold]bench.service[/] on {info['device_name']} ({info['usable_cores']} cores), "
        f"worker device {device}: parts {', '.join(args.parts)}; the load generator, the "
        "servers and the worker share these cores."
    )
    results: dict[str, Any] = {"burst": [], "polling": [], "upload": None, "queue": []}
    failure = None
    machine_window = CpuWindow()
    machine_window.__enter__()
    try:
        with tempfile.TemporaryDirectory(prefix="cake-bench-service-") as tmp:
            workdir = Path(tmp)
            try:
                need_pg = "polling" in args.parts or "upload" in args.parts
                need_pg = need_pg or ("queue" in args.parts and "redis" in args.brokers)
                if need_pg:
                    pg = run_postgres_redis(args, workdir, device)
                    results.update({k: v for k, v in pg.items() if k != "queue"})
                    results["queue"].extend(pg["queue"])
                if "queue" in args.parts and "filesystem" in args.brokers:
                    results["queue"].append(run_embedded(args, workdir, device))
            except (BenchError, subprocess.CalledProcessError) as exc:
                failure = str(exc)
                console.print(f"[red]benchmark failed:[/] {exc}")
            finally:
                stop_all()
                if args.keep_logs:
                    args.keep_logs.mkdir(parents=True, exist_ok=True)
                    for log in workdir.glob("*.log"):
                        shutil.copy(log, args.keep_logs / log.name)
    finally:
        stop_all()
        signal.signal(signal.SIGTERM, previous)
        machine_window.__exit__(None, None, None)
    rows = summary_rows(results)
    print_summary(rows)
    elapsed = time.perf_counter() - started
    load = machine_window.result
    busy = load["others_cores"] > 0.5
    console.print(
        f"elapsed {elapsed:.0f} s; other processes used {load['others_cores']:.2f} of "
        f"{info['usable_cores']} cores on average (this benchmark's processes "
        f"{load['ours_cores']:.2f}); machine {'BUSY' if busy else 'quiet'}. Latencies are "
        "measured by a load generator on the same cores as the server.",
        highlight=False,
    )
    if failure:
        console.print(f"[red]incomplete:[/] {failure.splitlines()[0]}")
    payload = {
        "benchmark": "service",
        "command": command_line(),
        "arguments": {k: v for k, v in vars(args).items() if k not in ("out", "keep_logs")},
        "machine": {
            **info,
            "elapsed_seconds": round(elapsed, 1),
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "cpu": load,
            "busy": busy,
        },
        "targets": {
            "poll_p99_s": POLL_TARGET_S,
            "upload_api_peak_rss_mib": RSS_TARGET_MIB,
            "queue_to_running_s": QUEUE_TARGET_S,
        },
        "summary": [{**r, "pass": r["pass"]} for r in rows],
        "results": results,
        "error": failure,
    }
    path = write_results(args.out, "service", device, payload)
    console.print(f"wrote {path}")
    if failure:
        return 2
    return 0 if all(r["pass"] is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
