"""The two set-ups the parts run on: PostgreSQL + Redis (``cake serve --no-worker`` and a
``cake worker``), and the embedded ``cake serve`` with no configuration."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from bench.common import REPO_ROOT, console
from bench.service.load import run_burst, run_polling
from bench.service.processes import (
    LOCAL_ONLY,
    Managed,
    cake,
    postgres_database,
    redis_database,
    service_env,
    start_api,
    wait_log,
)
from bench.service.queue_latency import TINY_SPEC, run_queue, upload_small_teacher
from bench.service.upload import build_big_teacher, run_upload


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
