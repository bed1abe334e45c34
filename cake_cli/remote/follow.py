"""Following a job to its end: live progress, Ctrl-C, and the report of a finished job.

``cake submit --wait`` and ``cake jobs wait`` both end here, so a job reports the same way
(exit code by status, the student downloaded and verified, the metrics table) whichever
command followed it. ``-o`` picks the student file by its extension (``.onnx``: the ONNX
student, ``.int8.onnx``: its int8 quantization, else ``student.pt``); ``--artifact`` overrides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cake_cli.remote.output import (
    EXIT_CANCELED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    STATUS_EXIT,
    CliError,
    Output,
    transfer_bar,
)
from cake_cli.tables import metrics_table
from cake_shared.status import RUNNING_PHASES, JobStatus

if TYPE_CHECKING:
    from cake_client import Client, Job, JobProgress


def job_metrics_table(job: Job) -> Table:
    """The metrics table of a job of the service, titled by the student its spec asked for."""
    student = job.spec.get("student") or {}
    return metrics_table(job.metrics, student.get("arch", "?"), student.get("width"))


def follow(
    client: Client,
    job_id: str,
    args: argparse.Namespace,
    out: Output,
    document: dict[str, Any],
    download: bool,
) -> int:
    """Wait for the job with live progress; Ctrl-C asks whether to cancel it."""
    from cake_client import WaitTimeout

    try:
        with JobView(out) as view:
            job = client.jobs.wait(job_id, timeout=args.wait_timeout, on_progress=view.update)
    except KeyboardInterrupt:
        return _interrupted(client, job_id, out)
    except WaitTimeout as exc:
        raise CliError(
            f"job {job_id} did not finish within {exc.timeout:g} s; it keeps running "
            f"(follow it with: cake jobs wait {job_id})",
            EXIT_ERROR,
            "wait_timeout",
        ) from None
    document["job"] = job.raw
    return _finish(client, job, args, download, out, document)


def wanted_artifact(args: argparse.Namespace, output: Path | None) -> str:
    """The artifact to download: ``--artifact`` when given, else the student file the output's
    extension asks for (``.onnx``, ``.int8.onnx``; anything else ``student.pt``)."""
    from cake_shared.student_files import STUDENT_PT, student_file_for

    explicit = getattr(args, "artifact", None)
    if explicit:
        return str(explicit)
    if output is None or output.is_dir():
        return STUDENT_PT
    return student_file_for(output)


def _finish(
    client: Client,
    job: Job,
    args: argparse.Namespace,
    download: bool,
    out: Output,
    document: dict[str, Any],
) -> int:
    """Report a finished job: on success download the student and show the metrics."""
    from cake_cli.remote import exit_code_for
    from cake_client import ArtifactUnavailable

    if job.status != JobStatus.SUCCEEDED:
        code = STATUS_EXIT.get(job.status, EXIT_ERROR)
        if out.json:
            out.emit(document)
        if job.status == JobStatus.FAILED:
            reason = f"{job.error.message} ({job.error.code})" if job.error else "no reason given"
            return out.error(f"job {job.id} failed: {reason}", code, "job_failed")
        return out.error(f"job {job.id} was {job.status}", code, f"job_{job.status}")
    unavailable: ArtifactUnavailable | None = None
    if download:
        output: Path | None = args.output
        name = wanted_artifact(args, output)
        try:
            with transfer_bar(out, f"downloading {name}") as progress:
                path = client.jobs.download(job.id, name, output or Path(name), progress)
        except ArtifactUnavailable as exc:
            # The job succeeded but did not keep this file (int8 refused, ONNX export failed):
            # its metrics still show, then one line says why the file is not there.
            unavailable = exc
        else:
            artifact = {a.name: a for a in client.jobs.artifacts(job.id)}.get(name)
            document["student"] = {
                "artifact": name,
                "path": str(path.resolve()),
                "sha256": artifact.sha256 if artifact else None,
                "size_bytes": path.stat().st_size,
            }
    if out.json:
        out.emit(document)
    else:
        out.result(f"job {job.id} succeeded")
        out.console.print(job_metrics_table(job))
        student = document.get("student")
        if student:
            out.result(f"wrote {student['path']} (sha256 {student['sha256']}, verified)")
    if unavailable is not None:
        code, problem = exit_code_for(unavailable)
        return out.error(str(unavailable), code, problem)
    return EXIT_OK


def _interrupted(client: Client, job_id: str, out: Output) -> int:
    """Ctrl-C while waiting: on a terminal, ask; otherwise leave the job running."""
    if sys.stdin.isatty() and sys.stderr.isatty():
        try:
            sys.stderr.write(f"\ncancel job {job_id} on the service? [y/N] ")
            sys.stderr.flush()
            answer = sys.stdin.readline().strip().lower()
        except (KeyboardInterrupt, EOFError):
            answer = ""
        if answer in ("y", "yes"):
            job = client.jobs.cancel(job_id)
            state = job.status if job.finished else "cancel requested"
            out.info(f"job {job_id}: {state}")
            if out.json:
                out.emit({"job": job.raw})
            return EXIT_CANCELED
    return out.error(
        f"interrupted; job {job_id} keeps running on the service "
        f"(follow it with: cake jobs wait {job_id})",
        EXIT_INTERRUPTED,
        "interrupted",
        job_id=job_id,
    )


class JobView:
    """A bar per phase (and the overall fraction) on a terminal; a line per phase on a pipe."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.tasks: dict[str, TaskID] = {}
        self.last_line: str | None = None
        self.progress = Progress(
            TextColumn("{task.description:<13}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
            console=out.err,
            disable=not out.bars,
        )
        self.total: TaskID | None = None

    def __enter__(self) -> JobView:
        self.progress.__enter__()
        if self.out.bars:
            self.total = self.progress.add_task("total", total=1.0, message="")
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, p: JobProgress) -> None:
        if p.event is not None and (p.event.type == "no_worker" or p.event.level == "warning"):
            # Nobody serves the job's queue, or the student is larger than its teacher: say
            # so, on a terminal as on a pipe.
            self.out.info(f"warning: {p.event.message}")
        message = p.message if len(p.message) <= 60 else p.message[:59] + "…"
        if not self.out.bars:
            if p.status in STATUS_EXIT:
                label = p.status
            elif p.phase in RUNNING_PHASES:
                label = p.phase
            else:
                label = "starting" if p.status == JobStatus.RUNNING else JobStatus.QUEUED
            if label != self.last_line:
                self.last_line = label
                self.out.info(f"[{p.progress:4.0%}] {label}")
            return
        if self.total is not None:
            self.progress.update(self.total, completed=p.progress, message=p.status)
        if p.phase in RUNNING_PHASES:
            if p.phase not in self.tasks:
                for task in self.tasks.values():
                    self.progress.update(task, completed=1.0)
                self.tasks[p.phase] = self.progress.add_task(p.phase, total=1.0, message="")
            fraction = p.phase_progress if p.phase_progress is not None else 0.0
            self.progress.update(self.tasks[p.phase], completed=fraction, message=message)
        if p.status == JobStatus.SUCCEEDED:
            for task in self.tasks.values():
                self.progress.update(task, completed=1.0)
