"""1. Polling: the load generator (``--clients`` pollers, each on its own keep-alive connection)
and the burst check (``--clients`` new clients at the same moment)."""

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
from typing import Any

import httpx

from bench.common import console
from bench.service.monitor import CpuWindow
from bench.service.processes import LOCAL_ONLY, BenchError, Managed
from bench.service.stats import histogram_summary, ms, percentile, server_histogram

#: Connections the polling warm-up opens at once.
WARM_UP_BATCH = 10
#: Simultaneous bursts in the burst check (each with fresh connections).
BURSTS = 3


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
            return server_histogram(client, base)

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
            hist_after = server_histogram(client, base)
        if hist_after:
            hist = histogram_summary(hist_before, hist_after)
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
