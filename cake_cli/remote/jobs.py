"""``cake jobs list|show|cancel|events|download|wait|delete``: the jobs of the service.

Each subcommand is bound to its handler where its parser is defined
(:func:`~cake_cli.remote.parsing.add_command`), so the command tree is written once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cake_cli.remote.follow import follow, job_metrics_table, wanted_artifact
from cake_cli.remote.listing import list_handler, newest
from cake_cli.remote.output import (
    EXIT_ERROR,
    EXIT_OK,
    STATUS_EXIT,
    Output,
    transfer_bar,
)
from cake_cli.remote.parsing import add_command
from cake_shared.status import JobStatus

if TYPE_CHECKING:
    from cake_client import Client, Job


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``jobs`` and its subcommands, each bound to its handler."""
    jobs = sub.add_parser("jobs", help="list, inspect, cancel, follow and download jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = add_command(jobs_sub, "list", common, jobs_list, help="jobs, newest first")
    p.add_argument("--status", choices=[status.value for status in JobStatus])
    p.add_argument("--teacher", help="only jobs of this teacher (tch_…)")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p = add_command(jobs_sub, "show", common, jobs_show, help="one job: status, spec, metrics")
    p.add_argument("job_id")
    p = add_command(jobs_sub, "cancel", common, jobs_cancel, help="cancel a queued or running job")
    p.add_argument("job_id")
    p = add_command(jobs_sub, "events", common, jobs_events, help="the job's log")
    p.add_argument("job_id")
    p.add_argument("--after", help="only events after this event id (evt_…)")
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    p = add_command(
        jobs_sub,
        "download",
        common,
        jobs_download,
        help="download an artifact (default: the student file -o asks for, else student.pt)",
    )
    p.add_argument("job_id")
    p.add_argument(
        "--artifact",
        help="artifact name (default: by -o's extension: .onnx student.onnx, .int8.onnx "
        "student.int8.onnx, else student.pt)",
    )
    p.add_argument("-o", "--output", type=Path, help="file or folder (default: the name, here)")
    p = add_command(
        jobs_sub,
        "wait",
        common,
        jobs_wait,
        help="follow a job until it ends; exit code by its status",
    )
    p.add_argument("job_id")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="download the student here if it succeeds; the extension picks the file "
        "(.onnx: student.onnx, .int8.onnx: student.int8.onnx, else student.pt)",
    )
    p.add_argument("--artifact", help="download this artifact if it succeeds (to -o, else here)")
    p.add_argument("--wait-timeout", type=float, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p = add_command(jobs_sub, "delete", common, jobs_delete, help="delete a finished job")
    p.add_argument("job_id")


def _job_row(job: Job) -> list[str]:
    created = job.created_at.strftime("%Y-%m-%d %H:%M") if job.created_at else ""
    return [job.id, job.status, job.phase, f"{job.progress:.0%}", job.teacher_id, created]


def _newest_jobs(client: Client, args: argparse.Namespace) -> list[Job]:
    return newest(
        args,
        lambda page: client.jobs.list(status=args.status, teacher_id=args.teacher, limit=page),
    )


jobs_list = list_handler(
    _newest_jobs, ("id", "status", "phase", "progress", "teacher", "created"), _job_row
)


def jobs_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.jobs.get(args.job_id)
    if out.json:
        out.emit(job.raw)
        return EXIT_OK
    out.result(f"job       {job.id}")
    out.result(f"status    {job.status} ({job.phase}, {job.progress:.0%})")
    out.result(f"teacher   {job.teacher_id}")
    if job.eval_dataset_id:
        out.result(f"eval set  {job.eval_dataset_id}")
    out.result(f"created   {job.created_at}")
    if job.finished_at:
        out.result(f"finished  {job.finished_at}")
    if job.error:
        out.result(f"error     {job.error.code}: {job.error.message}")
    if job.metrics:
        out.console.print(job_metrics_table(job))
    return EXIT_OK


def jobs_cancel(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.jobs.cancel(args.job_id)
    if out.json:
        out.emit(job.raw)
    elif job.finished:
        out.result(f"job {job.id} {job.status}")
    else:
        out.result(f"job {job.id}: cancel requested (it stops at its next step)")
    return EXIT_OK


def jobs_events(client: Client, args: argparse.Namespace, out: Output) -> int:
    """The job's log; with --json one event a line (JSON Lines), so it can be streamed."""
    events = (
        client.jobs.stream_events(args.job_id, after=args.after)
        if args.follow
        else client.jobs.events(args.job_id, after=args.after)
    )
    for event in events:
        if out.json:
            sys.stdout.write(json.dumps(event.raw) + "\n")
            sys.stdout.flush()
        else:
            when = event.created_at.strftime("%H:%M:%S") if event.created_at else ""
            out.result(f"{when} {event.level:<7} {event.type:<10} {event.message}")
    return EXIT_OK


def jobs_download(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.jobs.get(args.job_id)
    if job.status != JobStatus.SUCCEEDED:
        # Refuse up front with the job's own state: clearer than the service's 409.
        code = STATUS_EXIT.get(job.status, EXIT_ERROR)
        return out.error(
            f"job {job.id} is {job.status}; only a succeeded job has artifacts to download",
            code,
            "conflict",
        )
    name = wanted_artifact(args, args.output)
    target = args.output or Path(name)
    # A student.onnx or student.int8.onnx the job did not keep is ArtifactUnavailable: one
    # line with the manifest's reason, exit code 1 (cake_cli.remote.exit_code_for).
    with transfer_bar(out, f"downloading {name}") as progress:
        path = client.jobs.download(job.id, name, target, on_progress=progress)
    artifact = {a.name: a for a in client.jobs.artifacts(job.id)}.get(name)
    sha = artifact.sha256 if artifact else None
    if out.json:
        out.emit({"path": str(path.resolve()), "name": name, "sha256": sha})
    else:
        out.result(f"wrote {path} (sha256 {sha}, verified)")
    return EXIT_OK


def jobs_wait(client: Client, args: argparse.Namespace, out: Output) -> int:
    document: dict[str, Any] = {"job": None, "student": None}
    download = args.output is not None or args.artifact is not None
    return follow(client, args.job_id, args, out, document, download=download)


def jobs_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.jobs.delete(args.job_id)
    return out.deleted("job", args.job_id)
