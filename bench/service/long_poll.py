"""2. Long polling: ``--long-poll-clients`` clients wait on one job with ``GET
/v1/jobs/{id}?wait=N``; what the API costs while nothing changes, and how soon each client hears
of a change.

Each client holds one keep-alive connection and loops as a real client would: a plain GET for
the job's ETag, then ``?wait=N`` with ``If-None-Match`` = the ETag it last saw; on 304 (N seconds
without a change) it asks again at once, on 200 it notes when the new state arrived and stops
once the job has ended. Nothing runs the job (no worker), so nothing changes until the benchmark
cancels it.

The clients speak HTTP/1.1 themselves (:class:`bench.service.rawhttp.RawHttp`): with a
thousand ``httpx`` clients the load generator took 1.2 s of CPU to read the thousand answers to
one change (the server 0.37 s to send them), so the delays measured were the generator's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.common import console
from bench.service.load import event_loop_runner
from bench.service.monitor import CpuWindow
from bench.service.processes import LOCAL_ONLY, BenchError, start_api
from bench.service.rawhttp import RAW_ERRORS, RawHttp
from bench.service.runs import poll_setup
from bench.service.stats import (
    LONG_POLL_DELAY_TARGET_S,
    LONG_POLL_IDLE_CORES_TARGET,
    ms,
    percentile,
)

#: Clients whose first (plain) GET goes out at once while the connections are opened: more at
#: once would measure a burst of new connections, a check of its own.
CONNECT_BATCH = 50
#: Seconds between the last client's first long poll and the start of the idle window, so
#: that the window sees waiting, not connecting.
SETTLE_S = 1.0
#: How long clients may take to hear of the change before they are counted as not seeing it
#: (far beyond the target: a late client is reported with its delay, not cut off at 1 s).
CHANGE_TIMEOUT_S = 20.0
#: A read may wait ``wait`` seconds for the server's answer, plus this margin.
READ_MARGIN_S = 15.0
#: Pause after a failed request before the client asks again (no tight loop of errors).
RETRY_PAUSE_S = 0.2
#: File descriptors the benchmark keeps beyond one per client (servers' logs, psutil, the
#: control connection...).
SPARE_FDS = 200
TERMINAL = frozenset({"succeeded", "failed", "canceled"})


def raise_nofile_limit(wanted: int) -> dict[str, Any]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit when it is below
    ``wanted``: each client holds a socket here, and the API server (started afterwards, so it
    inherits the limit) holds the other end. Says so when the hard limit is not enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out: dict[str, Any] = {"wanted": wanted, "soft_before": soft, "hard": hard}
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            console.print(f"[yellow]  could not raise the open-files limit ({soft}): {exc}[/]")
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    out["soft"] = soft
    out["enough"] = soft == resource.RLIM_INFINITY or soft >= wanted
    if not out["enough"]:
        console.print(
            f"[yellow]  open-files limit {soft} (hard {hard}) is below the {wanted} this part "
            "needs: expect connection errors[/]"
        )
    return out


@dataclass(eq=False)
class _Client:
    http: RawHttp
    etag: str | None = None
    not_modified: int = 0
    #: (arrival, status) of every 200 after the first GET: a new state of the job.
    changes: list[tuple[float, str]] = field(default_factory=list)


async def _follow(client: _Client, path: str, wait: float, errors: list[tuple[float, str]]) -> None:
    """One client's loop, until it has seen the job end."""
    target = f"{path}?wait={wait:g}"
    while True:
        try:
            status, fields, body = await client.http.get(
                target, {"If-None-Match": client.etag or "*"}, wait + READ_MARGIN_S
            )
        except RAW_ERRORS as exc:
            errors.append((time.perf_counter(), type(exc).__name__))
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        if status == 304:
            client.not_modified += 1
            client.etag = fields.get("etag", client.etag)
            continue
        if status != 200:
            errors.append((time.perf_counter(), f"HTTP {status}"))
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        arrived = time.perf_counter()
        job_status = str(json.loads(body)["status"])
        client.etag = fields.get("etag")
        client.changes.append((arrived, job_status))
        if job_status in TERMINAL:
            return


async def _long_poll(
    base: str,
    job_id: str,
    clients: int,
    wait: float,
    idle_s: float,
    headers: dict[str, str],
    server_pid: int,
) -> dict[str, Any]:
    url = f"{base}/v1/jobs/{job_id}"
    path = f"/v1/jobs/{job_id}"
    split = urlsplit(base)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    errors: list[tuple[float, str]] = []
    connect_errors: Counter[str] = Counter()
    tasks: list[asyncio.Task[None]] = []
    pool = [_Client(RawHttp(host, port, headers)) for _ in range(clients)]
    async with contextlib.AsyncExitStack() as stack:
        control = await stack.enter_async_context(
            httpx.AsyncClient(timeout=30.0, headers=headers, **LOCAL_ONLY)
        )
        stack.push_async_callback(_close_all, pool)
        first = await control.get(url)
        if first.status_code != 200 or first.json()["status"] != "queued":
            raise BenchError(f"GET {url}: {first.status_code} {first.text[:300]}")
        connect_started = time.perf_counter()
        # Connect a batch at a time; each client starts waiting as soon as it has its ETag, so
        # the waits (and their expiries, N s later) are spread as real clients' are.
        for i in range(0, clients, CONNECT_BATCH):
            batch = pool[i : i + CONNECT_BATCH]
            answers = await asyncio.gather(
                *(c.http.get(path, {}, 30.0) for c in batch), return_exceptions=True
            )
            for client, answer in zip(batch, answers, strict=True):
                if isinstance(answer, BaseException):
                    connect_errors[type(answer).__name__] += 1
                elif answer[0] != 200:
                    connect_errors[f"HTTP {answer[0]}"] += 1
                else:
                    client.etag = answer[1].get("etag")
                # a client whose first GET failed still long-polls (with `*`: it then waits
                # for a change, as with a current tag)
                tasks.append(asyncio.create_task(_follow(client, path, wait, errors)))
        connect_s = time.perf_counter() - connect_started
        await asyncio.sleep(SETTLE_S)
        gc.collect()
        gc.freeze()  # nothing to collect in what exists now: no collector pauses in the delays
        idle_started = time.perf_counter()
        with CpuWindow(groups={"server": server_pid}) as idle:
            await asyncio.sleep(idle_s)
        idle_ended = time.perf_counter()
        idle_errors = Counter(kind for t, kind in errors if idle_started <= t <= idle_ended)
        # The change: a queued job is canceled at once.
        cancel_sent = time.perf_counter()
        r = await control.post(f"{url}/cancel")
        cancel_returned = time.perf_counter()
        if r.status_code != 200 or r.json()["status"] != "canceled":
            raise BenchError(f"POST {url}/cancel: {r.status_code} {r.text[:300]}")
        with CpuWindow(groups={"server": server_pid}) as change:
            _done, pending = await asyncio.wait(tasks, timeout=CHANGE_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        gc.unfreeze()
    # a new state before anything changed would be a wrong answer (the job is only queued)
    early = sum(1 for c in pool for t, _ in c.changes if t < cancel_sent)
    delays = sorted(
        next((t for t, status in c.changes if t >= cancel_sent and status in TERMINAL))
        - cancel_sent
        for c in pool
        if any(t >= cancel_sent and status in TERMINAL for t, status in c.changes)
    )
    error_kinds = Counter(kind for _, kind in errors) + connect_errors
    return {
        "clients": clients,
        "wait_s": wait,
        "idle_s": idle_s,
        "connect_seconds": round(connect_s, 2),
        "connect_errors": dict(connect_errors),
        "idle_cpu": idle.result,
        # three decimals: the target is a quarter of a core, the window's own rounding is 0.01
        "idle_server_cores": round(
            idle.result["server_cpu_seconds"] / max(idle.result["wall_seconds"], 1e-9), 3
        ),
        "idle_errors": dict(idle_errors),
        "not_modified_answers": sum(c.not_modified for c in pool),
        "changes_before_cancel": early,
        "cancel_post_s": round(cancel_returned - cancel_sent, 4),
        "change_cpu": change.result,
        "saw_change": len(delays),
        "not_seen": clients - len(delays),
        "delay_p50_s": percentile(delays, 0.50),
        "delay_p99_s": percentile(delays, 0.99),
        "delay_max_s": delays[-1] if delays else None,
        # from the moment the cancel's answer came back (the change was committed by then)
        "delay_after_cancel_returned_max_s": (
            delays[-1] - (cancel_returned - cancel_sent) if delays else None
        ),
        "errors": sum(error_kinds.values()),
        "error_kinds": dict(error_kinds),
    }


async def _close_all(pool: list[_Client]) -> None:
    await asyncio.gather(*(c.http.close() for c in pool), return_exceptions=True)


def run_long_poll(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The long-poll row on a fresh server: SQLite (the embedded default), one API process,
    ``args.auth``, one queued job."""
    clients, wait, idle_s = args.long_poll_clients, args.long_poll_wait, args.long_poll_idle
    nofile = raise_nofile_limit(clients + SPARE_FDS)
    with poll_setup("longpoll-sqlite", "sqlite", args, workdir, "Long polling") as setup:
        api, base = start_api("api-longpoll", setup.env, workdir, 1, headers=setup.headers)
        try:
            console.print(
                f"  long poll: {clients} clients ?wait={wait:g} on one queued job, "
                f"{idle_s:g} s idle, then a cancel ...",
                end="",
                highlight=False,
            )
            api.remember_tree()
            runner, client_loop = event_loop_runner()
            result = runner(
                _long_poll(base, setup.job_id, clients, wait, idle_s, setup.headers, api.pid)
            )
        finally:
            api.stop()
    server_log = api.log_tail(1 << 26)
    max_delay = result["delay_max_s"]
    result.update(
        {
            "database": setup.database,
            "auth": setup.auth,
            "api_processes": 1,
            "server_command": "cake serve --no-worker",
            "client_event_loop": client_loop,
            "open_files_limit": nofile,
            "server_errors_logged": server_log.count("unhandled error in "),
            "pass": (
                result["errors"] == 0
                and result["idle_server_cores"] < LONG_POLL_IDLE_CORES_TARGET
                and max_delay is not None
                and max_delay < LONG_POLL_DELAY_TARGET_S
                and result["not_seen"] == 0
            ),
        }
    )
    console.print(
        f" {result['saw_change']}/{clients} saw the change: p50 {ms(result['delay_p50_s'])}, "
        f"p99 {ms(result['delay_p99_s'])}, max {ms(max_delay)}; idle server "
        f"{result['idle_server_cores']:.3f} cores ({result['not_modified_answers']} 304s); "
        f"{result['errors']} errors",
        highlight=False,
    )
    return result
