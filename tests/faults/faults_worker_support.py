"""Helpers of the worker-process fault tests: real ``cake worker`` processes that a test kills
(SIGKILL), stops (SIGTERM), freezes (SIGSTOP) and thaws (SIGCONT), on PostgreSQL, a private
``redis-server`` and a local object store, with ``cake serve --no-worker`` in front.

Why a private Redis: the tests leave unacknowledged messages of killed workers behind and count
queue lengths; a server of their own keeps other suites' messages out of both. Everything the
tests assert on is read straight from PostgreSQL (``job_row``, ``job_events``) and from
``/proc`` (which processes are alive, which are children of which).

The process helpers of the end-to-end tests (``tests/e2e/e2e_support.py``) are reused
(``conftest.py`` here makes them importable).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from e2e_support import (
    CakeProcess,
    descendants,
    expect,
    free_port,
    is_alive,
    kill_pids,
    service_env,
    wait_for,
)

__all__ = [
    "FINISHED",
    "Harness",
    "PrivateRedis",
    "Worker",
    "descendants",
    "expect",
    "figures",
    "is_alive",
    "wait_for",
]

FINISHED = ("succeeded", "failed", "canceled")
START_TIMEOUT_S = 120  # one process start: imports torch on a loaded 2-core machine
#: Settings every worker of these tests gets: a sweeper that looks every half second (the
#: default 30 s would only make the tests slow) and frequent progress writes.
WORKER_DEFAULTS = {"CAKE_SWEEP_INTERVAL_S": "0.5", "CAKE_PROGRESS_INTERVAL_S": "0.2"}


def figures(**values: Any) -> None:
    """One greppable line per test with what it saw (for docs/RELIABILITY.md)."""
    print("FIGURES " + json.dumps(values, sort_keys=True))


# -- a private redis-server ----------------------------------------------------------------------
class PrivateRedis:
    """``redis-server`` on a free port, without persistence, in a session of its own."""

    def __init__(self, log_path: Path) -> None:
        import redis

        self.port = free_port()
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=2)

        def pong() -> bool:
            try:
                return bool(self.client.ping())
            except redis.ConnectionError:
                assert self.proc.poll() is None, log_path.read_text()
                return False

        wait_for(pong, 20, f"redis-server on port {self.port}", interval=0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def waiting(self, queue: str = "cpu") -> int:
        """Messages waiting in ``queue`` (not taken by any worker)."""
        return int(self.client.llen(queue))

    def unacked(self) -> int:
        """Messages a worker took and has not acknowledged (kombu's ``unacked`` hash)."""
        return int(self.client.hlen("unacked"))

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


# -- worker processes ------------------------------------------------------------------------------
class Worker(CakeProcess):
    """``cake worker`` (solo pool for concurrency 1, prefork above) with signal helpers."""

    def __init__(self, name: str, env: dict[str, str], root: Path, concurrency: int = 1) -> None:
        self.name = name
        super().__init__(
            ["worker", "--queues", "cpu,gpu", "--concurrency", str(concurrency)],
            env,
            root / f"{name}.log",
            root,
        )

    def is_ready(self) -> bool:
        self.check_running()
        self.remember_children()
        return " ready." in self.log(tail=200_000)

    def pids(self) -> set[int]:
        """The worker and its live descendants (prefork pool children)."""
        return {self.pid} | descendants(self.pid)

    def runs(self, claimed_by: str | None) -> int | None:
        """The pid of this worker's process named by a job's ``claimed_by`` (``host:pid``)."""
        if not claimed_by:
            return None
        pid = int(claimed_by.rpartition(":")[2])
        return pid if pid in self.pids() else None

    def kill9(self, pids: set[int] | None = None) -> set[int]:
        """SIGKILL ``pids`` (default: the worker and all its descendants) at once; returns them.

        Nothing runs its cleanup: no hand-back, no acknowledgement, no last heartbeat.
        """
        pids = self.pids() if pids is None else pids
        self.remember_children()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.pid in pids:
            self.proc.wait(10)
        wait_for(lambda: not any(is_alive(p) for p in pids), 10, f"{pids} to die", interval=0.02)
        return pids

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGCONT (a stopped process ignores SIGTERM until continued), then SIGTERM: the
        documented clean stop, without waiting for it."""
        for pid in self.remember_children() | {self.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        self.terminate()
        super().stop(timeout)


# -- the deployment ------------------------------------------------------------------------------
@dataclass
class Harness:
    """The API, a PostgreSQL database, a private Redis and a local store shared by one module's
    tests; workers are started per test (``start_workers``) and all ended in teardown."""

    root: Path
    database_url: str
    redis: PrivateRedis
    env: dict[str, str]
    client: httpx.Client
    api: CakeProcess
    teacher_id: str = ""
    workers: list[Worker] = field(default_factory=list)

    # -- workers ---------------------------------------------------------------------------------
    def start_workers(self, *names: str, concurrency: int = 1, **extra: str) -> list[Worker]:
        """Start one ``cake worker`` per name (all at once) and wait until each is ready.

        ``extra``: more ``CAKE_*`` settings for these workers only.
        """
        env = {**self.env, **WORKER_DEFAULTS, **extra}
        started = [Worker(n, env, self.root, concurrency) for n in names]
        self.workers += started
        for worker in started:
            wait_for(worker.is_ready, START_TIMEOUT_S, f"worker {worker.name} to be ready", 0.1)
        return started

    def stop_workers(self) -> None:
        """Stop every worker of the test: all told at once, then each waited for."""
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.stop()
        self.workers.clear()

    def owner(self, job_id: str, workers: list[Worker]) -> tuple[Worker, int]:
        """The worker (and its process) that holds the job's claim now."""
        claimed_by = self.job(job_id)["claimed_by"]
        for worker in workers:
            pid = worker.runs(claimed_by)
            if pid is not None:
                return worker, pid
        raise AssertionError(f"job {job_id} is claimed by {claimed_by}, none of {workers}")

    def logs(self) -> str:
        parts = [f"--- {w.name}:\n{w.log(6000)}" for w in self.workers]
        return "\n".join([f"--- api:\n{self.api.log(3000)}", *parts])

    # -- jobs --------------------------------------------------------------------------------------
    def submit(self, spec: dict[str, Any]) -> str:
        body = {"teacher_id": self.teacher_id, **spec}
        return expect(self.client.post("/v1/jobs", json=body), 202)["id"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return expect(self.client.post(f"/v1/jobs/{job_id}/cancel"), 200)

    def job(self, job_id: str) -> dict[str, Any]:
        """The job's row, straight from PostgreSQL."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            cur = conn.execute(
                "SELECT status, phase, progress, attempts, claimed_by, claim_token, "
                "cancel_requested, error, metrics FROM jobs WHERE id = %s",
                (job_id,),
            )
            row = cur.fetchone()
            assert row is not None, job_id
            names = [d.name for d in cur.description or ()]
        return dict(zip(names, row, strict=True))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's events in the order they were written."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            cur = conn.execute(
                "SELECT seq, type, level, message, data FROM job_events WHERE job_id = %s "
                "ORDER BY seq",
                (job_id,),
            )
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def artifacts(self, job_id: str) -> dict[str, tuple[str, str]]:
        """The job's artifact rows: name -> (storage key, sha256)."""
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT name, storage_key, sha256 FROM artifacts WHERE job_id = %s", (job_id,)
            ).fetchall()
        return {name: (key, sha) for name, key, sha in rows}

    def wait_job(self, job_id: str, until: Any, timeout: float, what: str) -> dict[str, Any]:
        """Poll the job's row until ``until(row)``; the row."""
        return wait_for(
            lambda: (row := self.job(job_id)) and until(row) and row,
            timeout,
            f"job {job_id} {what}\n{self.logs()}",
            interval=0.05,
        )

    def wait_events(
        self, job_id: str, until: Any, timeout: float, what: str
    ) -> list[dict[str, Any]]:
        """Poll the job's events until ``until(events)``; the events."""
        return wait_for(
            lambda: (log := self.events(job_id)) and until(log) and log,
            timeout,
            f"job {job_id} {what}\n{self.logs()}",
            interval=0.05,
        )


def chunks(events: list[dict[str, Any]], attempt: int | None = None) -> list[int]:
    """Indices of the synthesis chunks computed (``progress`` events), optionally of one attempt."""
    return [
        int(e["data"]["metrics"]["chunk"])
        for e in events
        if e["type"] == "progress" and (attempt is None or e["data"].get("attempt") == attempt)
    ]


def epochs(events: list[dict[str, Any]], attempt: int | None = None) -> list[int]:
    """Training epochs finished (``metrics`` events of the training phase)."""
    return [
        int(e["data"]["metrics"]["epoch"])
        for e in events
        if e["type"] == "metrics"
        and e["data"].get("phase") == "training"
        and (attempt is None or e["data"].get("attempt") == attempt)
    ]


@contextlib.contextmanager
def in_process_services(env: dict[str, str]) -> Iterator[Any]:
    """Services (``cake_shared.services.Services``) of this (pytest) process on the deployment
    that ``env`` describes, for the few calls a test makes itself (publishing a job id): the
    settings are read with exactly the ``CAKE_*`` variables of ``env`` set, and the services are
    closed on exit."""
    from cake_shared.services import Services
    from cake_shared.settings import Settings

    saved = {k: v for k, v in os.environ.items() if k.startswith("CAKE_")}
    for key in saved:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("CAKE_")})
    try:
        settings = Settings()
    finally:
        for key in [k for k in os.environ if k.startswith("CAKE_")]:
            del os.environ[key]
        os.environ.update(saved)
    services = Services.from_settings(settings)
    try:
        yield services
    finally:
        services.close()


__all__ += [
    "START_TIMEOUT_S",
    "CakeProcess",
    "chunks",
    "epochs",
    "free_port",
    "in_process_services",
    "kill_pids",
    "service_env",
]
