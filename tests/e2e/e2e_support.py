"""Helpers for the end-to-end tests: real ``cake`` processes, polled with deadlines.

Every process is started in a session of its own (so a signal meant for it never reaches
pytest) and is ended in fixture teardown by its pid, together with every descendant it left
behind (``cake serve`` starts its Celery worker in yet another session, so a process-group
kill alone would miss it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("succeeded", "failed", "canceled")
S3_BUCKET = "cake-e2e"
S3_PREFIX = "svc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def service_env(**extra: str) -> dict[str, str]:
    """This environment without any ``CAKE_*`` setting, one CPU thread per process (2 shared
    cores), and this checkout importable; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


# -- processes -------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid`` from /proc, or None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited: it only waits to be reaped)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren...), whatever their session."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                parents[int(entry.name)] = stat[1]
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class CakeProcess:
    """``cake ARGS...`` (``python -m cake_cli.main``) as a child in its own session, logging to
    a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cake_cli.main", *args],
            env=env,
            cwd=str(cwd),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._seen: set[int] = set()

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def remember_children(self) -> set[int]:
        """Note the live descendants now, so that teardown can end them even once they are
        orphaned (no longer below this process)."""
        self._seen |= descendants(self.pid)
        return set(self._seen)

    def check_running(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"`cake {' '.join(self.args)}` exited with {code}:\n{self.log()}")

    def wait_http(self, url: str, timeout: float) -> None:
        """Poll ``url`` until it answers 200, failing at once if the process dies."""

        def ok() -> bool:
            self.check_running()
            self.remember_children()
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(ok, timeout, f"{url} to answer 200", interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log of cake {self.args[0]}:\n{self.log()}") from None

    def stop(self, timeout: float = 45.0) -> None:
        """SIGTERM (the documented clean stop), SIGKILL after ``timeout``; then every
        descendant that is still alive, by pid."""
        self.remember_children()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_pids(self._seen)
        self._log.close()


# -- the REST API ------------------------------------------------------------------------------
def expect(response: httpx.Response, status: int) -> Any:
    """The JSON body of ``response``, after checking its status (the body in the message)."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.status_code} "
        f"(expected {status}): {response.text[:2000]}"
    )
    return response.json()


def poll_job(
    client: httpx.Client,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
    history: list[dict[str, Any]] | None = None,
    check: Callable[[], None] | None = None,
    interval: float = 0.25,
) -> dict[str, Any]:
    """GET the job until ``until(job)``; every answer is appended to ``history``; ``check``
    runs between polls (e.g. that the worker still runs)."""

    def done() -> dict[str, Any] | None:
        if check is not None:
            check()
        job = expect(client.get(f"/v1/jobs/{job_id}"), 200)
        if history is not None:
            history.append(job)
        return job if until(job) else None

    return wait_for(done, timeout, f"job {job_id} {what}", interval=interval)


def all_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """The job's whole log, oldest first, following ``next_after`` pages."""
    events: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": 100}
        if after:
            params["after"] = after
        page = expect(client.get(f"/v1/jobs/{job_id}/events", params=params), 200)
        events += page["data"]
        if not page["has_more"]:
            return events
        after = page["next_after"] or page["data"][-1]["id"]
    raise AssertionError(f"job {job_id}: the event pages never ended")


def read_sse(client: httpx.Client, job_id: str, timeout: float) -> list[tuple[str, str]]:
    """The job's Server-Sent Events as (event, data) pairs, read with httpx-sse (the client's
    parser) until the stream ends; fails if it is still open after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pairs: list[tuple[str, str]] = []
    with connect_sse(
        client, "GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(timeout)
    ) as source:
        response = source.response
        assert response.status_code == 200, response.read()[:2000]
        assert response.headers["content-type"].startswith("text/event-stream")
        for message in source.iter_sse():
            if time.monotonic() > deadline:
                raise AssertionError(f"the event stream of {job_id} did not end in {timeout}s")
            if message.data:  # not the reconnection hint, nor a heartbeat
                pairs.append((message.event, message.data))
    return pairs


# -- the deployment fixture's parts ------------------------------------------------------------
@dataclass
class S3:
    endpoint: str
    client: Any

    def keys(self, prefix: str) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{S3_PREFIX}/{prefix}")
        return sorted(obj["Key"] for obj in listing.get("Contents", []))


@dataclass
class Deployment:
    url: str
    client: httpx.Client
    api: CakeProcess
    worker: CakeProcess
    postgres_url: str
    redis: Any
    s3: S3

    def check_alive(self) -> None:
        self.api.check_running()
        self.worker.check_running()

    def logs(self) -> str:
        return f"--- cake serve:\n{self.api.log(4000)}\n--- cake worker:\n{self.worker.log(8000)}"
