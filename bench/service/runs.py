"""The set-ups the parts run on: the polling matrix (SQLite or PostgreSQL, 1 or N API
processes, with or without an API key, no worker), PostgreSQL + Redis (``cake serve
--no-worker`` and a ``cake worker``) for the upload and the Redis queue latency, and the
embedded ``cake serve`` with no configuration for the filesystem broker's."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.common import REPO_ROOT, console
from bench.service.load import PollSetup, run_burst, run_polling
from bench.service.processes import (
    LOCAL_ONLY,
    BenchError,
    Managed,
    cake,
    create_api_key,
    postgres_database,
    redis_database,
    service_env,
    start_api,
    wait_log,
)
from bench.service.queue_latency import TINY_SPEC, run_queue, upload_small_teacher
from bench.service.upload import build_big_teacher, run_upload

#: The polling matrix's databases (``--databases``), as the tables name them.
DATABASES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def create_queued_job(base: str, teacher_id: str, headers: dict[str, str]) -> str:
    """A job nobody runs (no worker is started): it stays ``queued``, which is fine to poll and
    to cancel."""
    with httpx.Client(timeout=30, headers=headers, **LOCAL_ONLY) as client:
        r = client.post(base + "/v1/jobs", json={"teacher_id": teacher_id, **TINY_SPEC})
    if r.status_code != 202:
        raise BenchError(f"POST /v1/jobs answered {r.status_code}: {r.text[:500]}")
    return str(r.json()["id"])


@contextlib.contextmanager
def poll_setup(
    name: str, database: str, args: argparse.Namespace, workdir: Path, title: str = "Polling"
) -> Iterator[PollSetup]:
    """A service state to poll: a database of its own (``sqlite``: the embedded default in a
    data dir of its own, no ``CAKE_DATABASE_URL``; ``postgresql``: a fresh database on the
    local server, dropped at the end), migrated, with an API key when ``args.auth`` is ``key``
    (created before any server starts: from then on every ``/v1`` request needs it), and one
    queued job, made through a server that is stopped again.

    No broker is configured: nothing is sent to a worker while polling, and the API then uses
    the embedded filesystem broker (in the data dir), so Redis is not needed; and an API key's
    rate counter lives in each API process's memory (with a Redis broker it would be counted in
    Redis, one round trip per request).
    """
    with contextlib.ExitStack() as stack:
        data_dir = workdir / name
        data_dir.mkdir()
        settings = {"CAKE_DATA_DIR": str(data_dir)}
        if database == "postgresql":
            settings["CAKE_DATABASE_URL"] = stack.enter_context(
                postgres_database(args.pg_admin_url)
            )
        env = service_env(dict(os.environ), **settings)
        where = settings.get("CAKE_DATABASE_URL", "").rsplit("/", 1)[-1] or "embedded default"
        console.print(
            f"[bold]{title} on {DATABASES[database]}[/] ({where}; auth {args.auth}, no worker)",
            highlight=False,
        )
        subprocess.run(
            cake("db", "upgrade"), env=env, cwd=REPO_ROOT, check=True, capture_output=True
        )
        headers: dict[str, str] = {}
        if args.auth == "key":
            headers = {"Authorization": f"Bearer {create_api_key(env)}"}
        api, base = start_api(f"{name}-setup", env, workdir, headers=headers)
        try:
            teacher_id = upload_small_teacher(base, headers)
            job_id = create_queued_job(base, teacher_id, headers)
        finally:
            api.stop()
        yield PollSetup(database=database, auth=args.auth, env=env, job_id=job_id, headers=headers)


def poll_rows(args: argparse.Namespace) -> list[tuple[str, float]]:
    """The (schedule, interval) of each polling row: every schedule for each interval > 0, and
    one back-to-back row for an interval of 0 (no schedule then)."""
    rows: list[tuple[str, float]] = []
    for interval in args.poll_intervals:
        if interval <= 0:
            rows.append(("back-to-back", 0.0))
        else:
            rows += [(schedule, interval) for schedule in args.poll_schedules]
    return rows


def run_polling_matrix(args: argparse.Namespace, workdir: Path) -> dict[str, list[dict]]:
    """Polling (and the burst check, when asked for): for each database x API processes x
    schedule x interval, a freshly started server (a row that overloads it must not spoil the
    next one) and ``args.clients`` pollers."""
    out: dict[str, list[dict]] = {"burst": [], "polling": []}
    for database in args.databases:
        with poll_setup(f"poll-{database}", database, args, workdir) as setup:
            for workers in args.api_workers:
                if "burst" in args.parts:
                    api, base = start_api(
                        f"api-burst-{database}-{workers}p",
                        setup.env,
                        workdir,
                        workers,
                        headers=setup.headers,
                    )
                    try:
                        out["burst"].append(run_burst(api, base, setup, workers, args))
                    finally:
                        api.stop()
                if "polling" not in args.parts:
                    continue
                for schedule, interval in poll_rows(args):
                    name = f"api-poll-{database}-{workers}p-{schedule}-{interval:g}s"
                    api, base = start_api(name, setup.env, workdir, workers, headers=setup.headers)
                    try:
                        out["polling"].append(
                            run_polling(api, base, setup, workers, args, interval, schedule)
                        )
                    finally:
                        api.stop()
    return out


def run_postgres_redis(args: argparse.Namespace, workdir: Path, device: torch.device) -> dict:
    """Upload and Redis queue latency, on PostgreSQL + Redis (local mode: no API key)."""
    out: dict[str, Any] = {"upload": None, "queue": []}
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
        try:
            if "upload" in args.parts:
                teacher_path = workdir / "big_teacher.pt"
                console.print(f"  building a {args.upload_mb:g} MiB teacher ...", highlight=False)
                built = build_big_teacher(teacher_path, args.upload_mb)
                out["upload"] = run_upload(api, base, teacher_path, built)
                teacher_path.unlink()
            if "queue" in args.parts and "redis" in args.brokers:
                teacher_id = upload_small_teacher(base)
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
                finally:
                    worker.stop()
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
