"""1. Polling: the load generator (``--clients`` pollers, each on its own keep-alive connection,
on one of three schedules) and the burst check (``--clients`` new clients at the same moment).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.common import console
from bench.service.monitor import CpuWindow
from bench.service.processes import LOCAL_ONLY, BenchError, Managed
from bench.service.rawhttp import RAW_ERRORS, RawHttp
from bench.service.stats import histogram_summary, ms, percentile, server_histogram

#: Connections the polling warm-up opens at once.
WARM_UP_BATCH = 10
#: Simultaneous bursts in the burst check (each with fresh connections).
BURSTS = 3
#: How paced pollers are scheduled (``--poll-schedules``): ``synchronized``: every client on the
#: same fixed clock from phase 0, a burst of ``clients`` requests each interval (``hey -c N -q
#: 1``, or N cron jobs); ``ticker``: each client on a fixed clock of its own, at a random phase
#: (independent scripts); ``sleep``: each client waits the interval after each answer, from a
#: random phase (pollers then bunch up behind any slow answer).
SCHEDULES = ("synchronized", "ticker", "sleep")


@dataclass
class PollSetup:
    """What every polling row of one database runs against: the servers' environment (their
    database), the headers every request sends (the API key's, or none in local mode) and the
    queued job that is polled."""

    database: str  # "sqlite" (embedded default) or "postgresql"
    auth: str  # "key" or "local"
    env: dict[str, str]
    job_id: str
    headers: dict[str, str] = field(default_factory=dict)


def event_loop_runner() -> tuple[Callable[..., Any], str]:
    """uvloop's ``run`` when installed (a cheaper client per request, so more of the machine is
    left to the server), else ``asyncio.run``; and its name for the results."""
    try:
        import uvloop

        return uvloop.run, "uvloop"
    except ImportError:
        return asyncio.run, "asyncio"


async def _poll_load(
    url: str,
    clients: int,
    duration: float,
    interval: float,
    timeout: float,
    after_warm_up: Callable[[], Any] | None = None,
    schedule: str = "ticker",
    headers: dict[str, str] | None = None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """``clients`` pollers, each on a keep-alive connection of its own.

    Each poller is a :class:`~bench.service.rawhttp.RawHttp` connection, as ``hey``'s workers
    are: an ``httpx.AsyncClient`` per poller cost the generator about 2 ms of CPU per request
    (one shared client with a pool of ``clients`` connections about 13 ms, httpcore's pool
    bookkeeping growing with the pool), on the same two cores as the server: in a synchronized
    burst the last answers waited for the generator, not for the server.

    The CPU of ``server_pid``'s process tree is measured over exactly the polling window (from
    the first tick until the last answer), not the warm-up: divided by the requests answered
    in it, it is the API's CPU per request.
    """
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    lags: list[float] = []
    split = urlsplit(url)
    host, port, path = split.hostname or "127.0.0.1", split.port or 80, split.path
    pool = [RawHttp(host, port, headers or {}) for _ in range(clients)]
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(
            lambda: asyncio.gather(*(c.close() for c in pool), return_exceptions=True)
        )
        # Open every connection first (not measured; a poller keeps its connection), a few at
        # a time: a burst of simultaneous first requests is a check of its own (run_burst).
        warm: list[Any] = []
        for i in range(0, clients, WARM_UP_BATCH):
            batch = pool[i : i + WARM_UP_BATCH]
            warm += await asyncio.gather(
                *(c.get(path, {}, timeout) for c in batch), return_exceptions=True
            )
        warm_errors = Counter(
            type(w).__name__ if isinstance(w, BaseException) else f"HTTP {w[0]}"
            for w in warm
            if isinstance(w, BaseException) or w[0] != 200
        )
        before = await asyncio.to_thread(after_warm_up) if after_warm_up else None
        # No collector pauses in the load generator while it measures (they would show up as
        # server latency): what exists now is frozen, and little is allocated in 30 s.
        gc.collect()
        gc.freeze()
        gc.disable()
        window = CpuWindow(groups={"server": server_pid} if server_pid else {})
        window.__enter__()
        start = time.perf_counter()
        end = start + duration
        completed = 0

        async def one_client(client: RawHttp) -> None:
            nonlocal completed
            if interval <= 0 or schedule == "synchronized":
                next_at = start  # all at once, then on the same clock
            else:  # spread the pollers over the interval, as independent scripts are
                next_at = start + random.uniform(0, interval)
            while True:
                if interval > 0:
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                t0 = time.perf_counter()  # uvloop's loop.time() only has 1 ms steps
                if t0 >= end:
                    return
                try:
                    code = (await client.get(path, {}, timeout))[0]
                    statuses[str(code)] += 1
                    if code != 200:
                        errors[f"HTTP {code}"] += 1
                except RAW_ERRORS as exc:
                    errors[type(exc).__name__] += 1
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                if t1 <= end:
                    completed += 1
                if interval <= 0:
                    continue
                if schedule == "sleep":  # wait the interval after each answer
                    next_at = t1 + interval
                else:  # a fixed clock, skipping the ticks missed while waiting (synchronized:
                    # everybody's, so a slow burst never spreads the next one out)
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
            elapsed = max(time.perf_counter() - start, 1e-9)
            window.__exit__(None, None, None)
            gc.enable()
            gc.unfreeze()
    latencies.sort()
    lags.sort()
    answered = sum(statuses.values())  # every request sent in the window, answered in it
    server_cpu_s = window.result.get("server_cpu_seconds")
    return {
        "requests": len(latencies),
        "answered": answered,
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
        "cpu": window.result,
        "server_cpu_seconds": server_cpu_s,
        "server_cpu_ms_per_request": (
            round(server_cpu_s * 1000 / answered, 3)
            if server_cpu_s is not None and answered
            else None
        ),
    }


async def _bursts(
    url: str, clients: int, bursts: int, timeout: float, headers: dict[str, str]
) -> list[dict[str, Any]]:
    out = []
    for _ in range(bursts):
        async with contextlib.AsyncExitStack() as stack:
            pool = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        limits=httpx.Limits(max_connections=1),
                        timeout=timeout,
                        headers=headers,
                        **LOCAL_ONLY,
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


def _check_get(url: str, headers: dict[str, str]) -> None:
    with httpx.Client(timeout=30, headers=headers, **LOCAL_ONLY) as client:
        r = client.get(url)
    if r.status_code != 200:
        raise BenchError(f"GET {url} does not answer 200: {r.status_code} {r.text[:300]}")


def run_burst(
    api: Managed, base: str, setup: PollSetup, workers: int, args: argparse.Namespace
) -> dict[str, Any]:
    """``clients`` new clients send their first GET at the same moment, ``BURSTS`` times:
    does every one get an answer, and how long does the last wait?"""
    url = f"{base}/v1/jobs/{setup.job_id}"
    console.print(
        f"  burst: {args.clients} simultaneous GETs on fresh connections x{BURSTS}, {workers} "
        "API process(es) ...",
        end="",
        highlight=False,
    )
    _check_get(url, setup.headers)
    with CpuWindow(groups={"server": api.pid}) as cpu:
        bursts = asyncio.run(_bursts(url, args.clients, BURSTS, args.timeout, setup.headers))
    server_log = api.log_tail(1 << 26)
    result = {
        "database": setup.database,
        "auth": setup.auth,
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


def poll_mode(schedule: str, interval: float) -> str:
    """How the pollers of a row ask, in words."""
    if interval <= 0:
        return "back-to-back"
    if schedule == "sleep":
        return f"sleeping {interval:g} s after each answer"
    if schedule == "synchronized":
        return f"all at once every {interval:g} s"
    return f"every {interval:g} s, random phase"


def run_polling(
    api: Managed,
    base: str,
    setup: PollSetup,
    workers: int,
    args: argparse.Namespace,
    interval: float,
    schedule: str,
) -> dict[str, Any]:
    """One polling row: ``args.clients`` pollers on ``schedule`` every ``interval`` s (0:
    back-to-back) for ``args.duration`` s, against a freshly started server."""
    url = f"{base}/v1/jobs/{setup.job_id}"
    schedule = schedule if interval > 0 else "back-to-back"
    mode = poll_mode(schedule, interval)
    console.print(
        f"  polling ({setup.database}, {workers} API process(es), auth {setup.auth}): "
        f"{args.clients} clients {mode}, {args.duration:g} s ...",
        end="",
        highlight=False,
    )
    _check_get(url, setup.headers)

    def histogram() -> dict[float, float] | None:
        with httpx.Client(timeout=10, **LOCAL_ONLY) as client:
            return server_histogram(client, base)

    api.remember_tree()
    runner, client_loop = event_loop_runner()
    with CpuWindow(groups={"server": api.pid}) as whole:
        result = runner(
            _poll_load(
                url,
                args.clients,
                args.duration,
                interval,
                args.timeout,
                # the API's own histogram is per process: read it only with one process
                histogram if workers == 1 else None,
                schedule,
                setup.headers,
                api.pid,
            )
        )
    hist = None
    hist_before = result.pop("after_warm_up")
    if hist_before is not None:
        with httpx.Client(timeout=10, **LOCAL_ONLY) as client:
            hist_after = server_histogram(client, base)
        if hist_after:
            hist = histogram_summary(hist_before, hist_after)
    server_log = api.log_tail(1 << 26)
    result.update(
        {
            "database": setup.database,
            "auth": setup.auth,
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
            "schedule": schedule,
            "mode": mode,
            "duration_s": args.duration,
            "client_event_loop": client_loop,
            # with the warm-up (connections opened, histogram read) as well
            "cpu_with_warm_up": whole.result,
            "server_side": hist,
        }
    )
    cpu = result["cpu"]
    per_request = result["server_cpu_ms_per_request"]
    console.print(
        f" {result['requests_per_second']:.0f} req/s, p50 {ms(result['p50_s'])}, "
        f"p99 {ms(result['p99_s'])}, max {ms(result['max_s'])}, {result['errors']} errors; "
        f"API CPU {'-' if per_request is None else f'{per_request:.2f}'} ms/request "
        f"(server {cpu['server_cores']:.2f} cores, load generator "
        f"{cpu['load_generator_cores']:.2f}, others {cpu['others_cores']:.2f})",
        highlight=False,
    )
    return result
