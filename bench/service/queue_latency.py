"""3. Queue latency: tiny jobs on an idle worker, polled every 10 ms until they leave
``queued``."""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench.common import REPO_ROOT, console
from bench.service.processes import LOCAL_ONLY, BenchError, Managed
from bench.service.stats import ms, percentile
from cake_client.multipart import FilePart, MultipartBody

WINE_TEACHER = REPO_ROOT / "examples" / "wine_mlp.pt"
#: A job that finishes in a few seconds on a loaded CPU (the teacher has 13 inputs, 3 classes).
TINY_SPEC: dict[str, Any] = {
    "student": {"arch": "mlp", "width": 0.25},
    "synthesis": {"num_samples": 240, "batch_size": 60, "groups": 3, "steps": 2},
    "training": {"epochs": 1},
}


def upload_small_teacher(base: str, auth: dict[str, str] | None = None) -> str:
    """The wine MLP as a teacher; ``auth``: the API key's header, when the service has keys."""
    body = MultipartBody(
        {"input_shape": "[13]", "name": "bench-wine"}, [FilePart("file", WINE_TEACHER)]
    )
    headers = {"Content-Type": body.content_type, "Content-Length": str(len(body)), **(auth or {})}
    with httpx.Client(timeout=120, **LOCAL_ONLY) as client:
        r = client.post(base + "/v1/teachers", content=body, headers=headers)
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
