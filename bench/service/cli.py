"""``python -m bench.service``: the flags, the order of the parts, the result file."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import bench.service
from bench.common import (
    add_common_args,
    command_line,
    console,
    machine_info,
    setup_device,
    write_results,
)
from bench.service.load import SCHEDULES
from bench.service.long_poll import run_long_poll
from bench.service.monitor import CpuWindow
from bench.service.processes import BenchError, stop_all
from bench.service.report import JUDGED, print_summary, summary_rows
from bench.service.runs import DATABASES, run_embedded, run_polling_matrix, run_postgres_redis
from bench.service.stats import TARGETS

#: The first line of the package's docstring, the ``--help`` description.
DESCRIPTION = (bench.service.__doc__ or "").splitlines()[0]


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _word_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


#: Every part, and those that run by default (the burst check is on request only).
PARTS = ("polling", "burst", "longpoll", "upload", "queue")
DEFAULT_PARTS = "polling,longpoll,upload,queue"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=DESCRIPTION)
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
        help="seconds between a client's polls, comma list; 0 = back-to-back, one row "
        "whatever the schedules (default 1; quick 0.5)",
    )
    parser.add_argument(
        "--poll-schedules",
        "--poll-schedule",
        type=_word_list,
        default=["synchronized", "ticker"],
        help="paced pollers, comma list: synchronized = every client on one clock from phase "
        "0, a burst of --clients requests every interval (hey -c N -q 1); ticker = each on a "
        "clock of its own, random phase; sleep = the interval after each answer (pollers then "
        "bunch up behind any slow answer) (default synchronized,ticker)",
    )
    parser.add_argument(
        "--databases",
        type=_word_list,
        default=list(DATABASES),
        help="polling matrix databases, comma list: sqlite (the embedded default), "
        "postgresql (a database of its own on --pg-admin-url) (default sqlite,postgresql)",
    )
    parser.add_argument(
        "--auth",
        choices=("key", "local"),
        default="key",
        help="polling and long poll: key = create an API key first (cake keys create) and "
        "send it with every request; local = no key (single-user local mode) (default key)",
    )
    parser.add_argument(
        "--long-poll-clients",
        type=int,
        help="long-polling clients on one job (default 1000; quick 50)",
    )
    parser.add_argument(
        "--long-poll-wait",
        type=float,
        help="the clients' ?wait=N, seconds, at most 60 (default 30; quick 2)",
    )
    parser.add_argument(
        "--long-poll-idle",
        type=float,
        help="seconds of waiting measured before the job changes; longer than the wait, so "
        "every client's wait expires and it asks again (default 40; quick 5)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    parser.add_argument("--upload-mb", type=float, help="teacher size in MiB (default 500)")
    parser.add_argument("--jobs", type=int, help="queue-latency jobs per broker (default 10)")
    parser.add_argument("--job-timeout", type=float, default=180.0, help="seconds per job")
    parser.add_argument(
        "--parts",
        default=DEFAULT_PARTS,
        help=f"comma list of: {', '.join(PARTS)} (default {DEFAULT_PARTS})",
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
        "poll_intervals": [0.5] if quick else [1.0],
        "long_poll_clients": 50 if quick else 1000,
        "long_poll_wait": 2.0 if quick else 30.0,
        "long_poll_idle": 5.0 if quick else 40.0,
        "upload_mb": 20.0 if quick else 500.0,
        "jobs": 2 if quick else 10,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if set(args.parts) - set(PARTS):
        parser.error(f"--parts takes {', '.join(PARTS)}")
    if set(args.poll_schedules) - set(SCHEDULES) or not args.poll_schedules:
        parser.error(f"--poll-schedules takes {', '.join(SCHEDULES)}")
    if set(args.databases) - set(DATABASES) or not args.databases:
        parser.error(f"--databases takes {', '.join(DATABASES)}")
    if args.long_poll_clients < 1 or args.long_poll_idle <= 0:
        parser.error("--long-poll-clients and --long-poll-idle must be positive")
    if not 0 < args.long_poll_wait <= 60:
        parser.error("--long-poll-wait must be in (0, 60]")
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
    results: dict[str, Any] = {
        "burst": [],
        "polling": [],
        "longpoll": None,
        "upload": None,
        "queue": [],
    }
    failure = None
    machine_window = CpuWindow()
    machine_window.__enter__()
    try:
        with tempfile.TemporaryDirectory(prefix="cake-bench-service-") as tmp:
            workdir = Path(tmp)
            try:
                if "polling" in args.parts or "burst" in args.parts:
                    results.update(run_polling_matrix(args, workdir))
                if "longpoll" in args.parts:
                    results["longpoll"] = run_long_poll(args, workdir)
                need_pg = "upload" in args.parts
                need_pg = need_pg or ("queue" in args.parts and "redis" in args.brokers)
                if need_pg:
                    pg = run_postgres_redis(args, workdir, device)
                    results["upload"] = pg["upload"]
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
        "targets": {"polling_judged_for": JUDGED, **TARGETS},
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
