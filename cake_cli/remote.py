"""``cake submit``, ``cake jobs``, ``cake teachers``, ``cake datasets``: a running service from
a terminal or a pipeline, built on :mod:`cake_client`.

Every command takes ``--url`` (default ``$CAKE_URL``, else http://127.0.0.1:8000) and
``--json``; the API key comes from ``$CAKE_API_KEY``. With ``--json`` stdout carries exactly one
JSON document (``jobs events`` prints one event per line) built from what the service sent, and
nothing else, so pipelines can parse it.

Exit codes are the contract a pipeline branches on, so they are fixed here:

====  ============================================================================
0     done (for a job: it succeeded)
1     other error (server error, conflict, checksum mismatch, wait timed out)
2     bad input: missing file, bad shape or spec, unknown id, 4xx from the service
3     the job failed
4     the job was canceled
5     the service is unreachable (after retries) or not ready
6     unauthorized (missing or wrong CAKE_API_KEY)
130   interrupted (Ctrl-C) and the job left running
====  ============================================================================

Errors are one line on stderr (with ``--json``, one line of JSON), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from cake_cli.spec_args import SpecFileError, add_spec_arguments, read_spec_file
from cake_client._http import DEFAULT_MAX_RETRIES
from cake_shared.status import RUNNING_PHASES, JobStatus

if TYPE_CHECKING:
    from cake_client import Client, Job, JobProgress

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_FAILED = 3
EXIT_CANCELED = 4
EXIT_UNREACHABLE = 5
EXIT_UNAUTHORIZED = 6
EXIT_INTERRUPTED = 130

COMMANDS = ("submit", "jobs", "teachers", "datasets", "architectures")
STATUS_EXIT = {
    JobStatus.SUCCEEDED: EXIT_OK,
    JobStatus.FAILED: EXIT_FAILED,
    JobStatus.CANCELED: EXIT_CANCELED,
}


class CliError(Exception):
    """A failure with its exit code, reported as one line by :func:`dispatch`."""

    def __init__(self, message: str, exit_code: int, code: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code


def _bad_input(message: str) -> CliError:
    return CliError(message, EXIT_BAD_INPUT, "bad_input")


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


class Output:
    """Where things go: results to stdout, progress and errors to stderr.

    Progress bars only appear on a terminal (and never with ``--json`` or ``--quiet``); on a
    pipe progress is a plain line per phase instead, so CI logs stay readable.
    """

    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.json = as_json
        self.quiet = quiet
        self.console = Console(highlight=False)
        if not self.console.is_terminal:
            # Rich assumes 80 columns on a pipe and would fold ids; ids must stay copyable.
            self.console.width = max(self.console.width, 200)
        self.err = Console(stderr=True, highlight=False)

    @property
    def bars(self) -> bool:
        return not self.json and not self.quiet and self.err.is_terminal

    def info(self, text: str) -> None:
        """A human line on stderr (progress, hints); silent with --json or --quiet."""
        if not self.json and not self.quiet:
            self.err.print(escape(text), soft_wrap=True)

    def result(self, text: str) -> None:
        if not self.json:
            self.console.print(escape(text), soft_wrap=True)

    def emit(self, document: Any) -> None:
        """The one JSON document of a --json run."""
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        sys.stdout.flush()

    def error(self, message: str, exit_code: int, code: str | None = None, **extra: Any) -> int:
        """One line on stderr, plain for people, JSON with --json; returns the exit code."""
        line = " ".join(str(message).split())
        if self.json:
            doc = {"error": {"code": code, "message": line, "exit_code": exit_code, **extra}}
            sys.stderr.write(json.dumps(doc, default=str) + "\n")
        else:
            sys.stderr.write(f"error: {line}\n")
        sys.stderr.flush()
        return exit_code


@contextmanager
def _transfer_bar(out: Output, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """An upload/download bar fed by ``(done, total)`` callbacks; None when bars are off."""
    if not out.bars:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=out.err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------------------------
# argument parsing (registered by cake_cli.main)
# --------------------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("service")
    group.add_argument(
        "--url",
        default=None,
        help="service URL (default: $CAKE_URL, else http://127.0.0.1:8000); "
        "the API key is read from $CAKE_API_KEY",
    )
    group.add_argument(
        "--json", action="store_true", help="print one machine-readable JSON document"
    )
    group.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        help=f"retries on connection errors, 429 and 5xx (default {DEFAULT_MAX_RETRIES})",
    )
    return common


def add_parsers(sub: Any) -> None:
    """Register ``submit``, ``jobs``, ``teachers``, ``datasets`` and ``architectures``."""
    common = _common()

    submit = sub.add_parser(
        "submit",
        parents=[common],
        help="upload a teacher to the service and create a distillation job",
        description="Upload a TorchScript teacher (and an evaluation set), create a job and, "
        "with --wait, follow it live, download the student (sha256 verified) and print its "
        "metrics. Exit codes: 0 succeeded, 3 failed, 4 canceled, 2 bad input, "
        "5 service unreachable, 6 unauthorized, 130 interrupted (job left running).",
    )
    submit.add_argument("teacher", type=Path, help="TorchScript archive of the teacher")
    add_spec_arguments(submit, "student architecture (see `cake architectures`)")
    submit.add_argument("--name", help="a label for the teacher")
    submit.add_argument("--metadata", help="JSON object stored with the job")
    submit.add_argument(
        "--callback-url", help="the service POSTs the job here, signed, when it ends"
    )
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("-o", "--output", type=Path, help="with --wait: where to write student.pt")
    submit.add_argument(
        "--wait-timeout", type=float, help="with --wait: give up waiting after this many seconds"
    )
    submit.add_argument("--quiet", action="store_true", help="no progress output")

    jobs = sub.add_parser("jobs", help="list, inspect, cancel, follow and download jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = jobs_sub.add_parser("list", parents=[common], help="jobs, newest first")
    p.add_argument("--status", choices=[status.value for status in JobStatus])
    p.add_argument("--teacher", help="only jobs of this teacher (tch_…)")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p = jobs_sub.add_parser("show", parents=[common], help="one job: status, spec, metrics")
    p.add_argument("job_id")
    p = jobs_sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    p.add_argument("job_id")
    p = jobs_sub.add_parser("events", parents=[common], help="the job's log")
    p.add_argument("job_id")
    p.add_argument("--after", help="only events after this event id (evt_…)")
    p.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    p = jobs_sub.add_parser(
        "download", parents=[common], help="download an artifact (default student.pt)"
    )
    p.add_argument("job_id")
    p.add_argument("--artifact", default="student.pt", help="artifact name (default student.pt)")
    p.add_argument("-o", "--output", type=Path, help="file or folder (default: the name, here)")
    p = jobs_sub.add_parser(
        "wait", parents=[common], help="follow a job until it ends; exit code by its status"
    )
    p.add_argument("job_id")
    p.add_argument("-o", "--output", type=Path, help="download student.pt here if it succeeds")
    p.add_argument("--wait-timeout", type=float, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p = jobs_sub.add_parser("delete", parents=[common], help="delete a finished job")
    p.add_argument("job_id")

    teachers = sub.add_parser("teachers", help="list, inspect, upload and delete teachers")
    t_sub = teachers.add_subparsers(dest="teachers_command", required=True)
    p = t_sub.add_parser("list", parents=[common], help="teachers, newest first")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p = t_sub.add_parser("show", parents=[common], help="one teacher")
    p.add_argument("teacher_id")
    p = t_sub.add_parser("delete", parents=[common], help="delete a teacher")
    p.add_argument("teacher_id")
    p = t_sub.add_parser("upload", parents=[common], help="upload a teacher (no job)")
    p.add_argument("teacher", type=Path)
    p.add_argument("--input-shape", required=True, help="e.g. 1,28,28")
    p.add_argument("--name", help="a label")
    p.add_argument("--num-classes", type=int, help="must equal what the service's probe finds")

    datasets = sub.add_parser("datasets", help="upload and list evaluation data sets")
    d_sub = datasets.add_subparsers(dest="datasets_command", required=True)
    p = d_sub.add_parser("upload", parents=[common], help="upload an .npz with x and y")
    p.add_argument("file", type=Path)
    p.add_argument("--name", help="a label")
    p = d_sub.add_parser("list", parents=[common], help="data sets, newest first")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p = d_sub.add_parser("show", parents=[common], help="one data set")
    p.add_argument("dataset_id")

    sub.add_parser(
        "architectures", parents=[common], help="the student architectures the service offers"
    )


# --------------------------------------------------------------------------------------------
# dispatch and error mapping
# --------------------------------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> tuple[int, str | None]:
    """The exit code (and problem code) for an exception of the client."""
    from cake_client import (
        CakeAPIError,
        NotReady,
        ServiceUnreachable,
        Unauthorized,
    )

    if isinstance(exc, Unauthorized):
        return EXIT_UNAUTHORIZED, exc.code
    if isinstance(exc, ServiceUnreachable):
        return EXIT_UNREACHABLE, "service_unreachable"
    if isinstance(exc, NotReady):
        return EXIT_UNREACHABLE, exc.code
    if isinstance(exc, CakeAPIError):
        if exc.status in (400, 404, 413, 422):
            return EXIT_BAD_INPUT, exc.code
        return EXIT_ERROR, exc.code
    if isinstance(exc, FileNotFoundError | ValueError):
        return EXIT_BAD_INPUT, "bad_input"
    return EXIT_ERROR, None


def _message(exc: BaseException) -> str:
    from cake_client import CakeAPIError

    if isinstance(exc, CakeAPIError):
        return f"{exc.detail} ({exc.code})"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"file not found: {exc.filename}"
    return str(exc) or type(exc).__name__


def dispatch(args: argparse.Namespace) -> int:
    """Run one remote command; every failure ends as one line and an exit code."""
    out = Output(getattr(args, "json", False), getattr(args, "quiet", False))
    try:
        from cake_client import CakeError, Client
    except ImportError as exc:  # a stale install that predates the client package
        return out.error(f"cannot load the client ({exc}); reinstall: pip install -e .", 1)
    try:
        handler = _handler(args)
        retries = max(0, int(getattr(args, "retries", DEFAULT_MAX_RETRIES)))
        with Client(getattr(args, "url", None), max_retries=retries) as client:
            return handler(client, args, out)
    except CliError as exc:
        return out.error(str(exc), exc.exit_code, exc.code)
    except KeyboardInterrupt:
        return out.error("interrupted", EXIT_INTERRUPTED, "interrupted")
    except (CakeError, OSError, ValueError) as exc:
        code, problem = exit_code_for(exc)
        return out.error(_message(exc), code, problem)
    except Exception as exc:  # never a traceback: one line, generic exit code
        return out.error(f"unexpected error: {type(exc).__name__}: {exc}", EXIT_ERROR)


def _handler(args: argparse.Namespace) -> Callable[[Client, argparse.Namespace, Output], int]:
    command = args.command
    if command == "submit":
        return _submit
    if command == "architectures":
        return _architectures
    sub = getattr(args, f"{command}_command", None)
    table: dict[tuple[str, str], Callable[[Client, argparse.Namespace, Output], int]] = {
        ("jobs", "list"): _jobs_list,
        ("jobs", "show"): _jobs_show,
        ("jobs", "cancel"): _jobs_cancel,
        ("jobs", "events"): _jobs_events,
        ("jobs", "download"): _jobs_download,
        ("jobs", "wait"): _jobs_wait,
        ("jobs", "delete"): _jobs_delete,
        ("teachers", "list"): _teachers_list,
        ("teachers", "show"): _teachers_show,
        ("teachers", "delete"): _teachers_delete,
        ("teachers", "upload"): _teachers_upload,
        ("datasets", "upload"): _datasets_upload,
        ("datasets", "list"): _datasets_list,
        ("datasets", "show"): _datasets_show,
    }
    try:
        return table[(command, sub or "")]
    except KeyError:
        raise _bad_input(f"unknown command: {command} {sub or ''}".strip()) from None


# --------------------------------------------------------------------------------------------
# submit and following a job
# --------------------------------------------------------------------------------------------


def _load_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec file (if any) with the flags laid over it; bad files are bad input."""
    from cake_client import build_spec

    try:
        spec = read_spec_file(args.spec)
    except SpecFileError as exc:
        raise _bad_input(str(exc)) from None
    student: dict[str, Any] = {}
    if args.student is not None:
        student["arch"] = args.student
    if args.width is not None:
        student["width"] = args.width
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise _bad_input(f"--metadata is not valid JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise _bad_input("--metadata must be a JSON object")
    return build_spec(
        spec,
        preset=args.preset,
        student=student or None,
        seed=args.seed,
        metadata=metadata,
    )


def _submit(client: Client, args: argparse.Namespace, out: Output) -> int:
    from cake_client import shape_list

    # Everything that can be checked here is checked before the first byte is sent.
    if not args.teacher.is_file():
        raise _bad_input(f"teacher file not found: {args.teacher}")
    if args.eval is not None and not args.eval.is_file():
        raise _bad_input(f"evaluation file not found: {args.eval}")
    if args.output is not None and not args.wait:
        raise _bad_input("-o/--output needs --wait (the student exists once the job succeeded)")
    try:
        shape = shape_list(args.input_shape)
    except ValueError as exc:
        raise _bad_input(str(exc)) from None
    spec = _load_spec(args)

    with _transfer_bar(out, f"uploading {args.teacher.name}") as progress:
        teacher = client.teachers.upload(
            args.teacher, shape, name=args.name or args.teacher.name, on_progress=progress
        )
    out.info(
        f"teacher {teacher.id}: {teacher.num_classes} classes, {teacher.parameters:,} "
        f"parameters ({_size(teacher.size_bytes)})"
    )
    dataset = None
    if args.eval is not None:
        with _transfer_bar(out, f"uploading {args.eval.name}") as progress:
            dataset = client.datasets.upload(args.eval, name=args.eval.name, on_progress=progress)
        out.info(f"evaluation set {dataset.id}: {dataset.num_examples} examples")
        spec["eval_dataset_id"] = dataset.id
    job = client.jobs.create(teacher.id, spec=spec, callback_url=args.callback_url)
    document: dict[str, Any] = {
        "teacher": teacher.raw,
        "dataset": dataset.raw if dataset else None,
        "job": job.raw,
        "student": None,
    }
    if not args.wait:
        if out.json:
            out.emit(document)
        else:
            out.result(f"job {job.id} {job.status}")
            out.info(f"follow it with: cake jobs wait {job.id}")
        return EXIT_OK
    out.info(f"job {job.id} {job.status}")
    return _follow(client, job.id, args, out, document, download=True)


def _follow(
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
        with _JobView(out) as view:
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
    return _finish(client, job, args.output if download else None, download, out, document)


def _finish(
    client: Client,
    job: Job,
    output: Path | None,
    download: bool,
    out: Output,
    document: dict[str, Any],
) -> int:
    """Report a finished job: on success download the student and show the metrics."""
    if job.status != JobStatus.SUCCEEDED:
        code = STATUS_EXIT.get(job.status, EXIT_ERROR)
        if out.json:
            out.emit(document)
        if job.status == JobStatus.FAILED:
            reason = f"{job.error.message} ({job.error.code})" if job.error else "no reason given"
            return out.error(f"job {job.id} failed: {reason}", code, "job_failed")
        return out.error(f"job {job.id} was {job.status}", code, f"job_{job.status}")
    if download:
        target = output or Path("student.pt")
        with _transfer_bar(out, "downloading student.pt") as progress:
            path = client.jobs.download_student(job.id, target, on_progress=progress)
        artifact = {a.name: a for a in client.jobs.artifacts(job.id)}.get("student.pt")
        document["student"] = {
            "path": str(path.resolve()),
            "sha256": artifact.sha256 if artifact else None,
            "size_bytes": path.stat().st_size,
        }
    if out.json:
        out.emit(document)
        return EXIT_OK
    out.result(f"job {job.id} succeeded")
    out.console.print(_metrics_table(job))
    student = document.get("student")
    if student:
        out.result(f"wrote {student['path']} (sha256 {student['sha256']}, verified)")
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


class _JobView:
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

    def __enter__(self) -> _JobView:
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


def _metrics_table(job: Job) -> Table:
    student = job.spec.get("student") or {}
    title = f"student: {student.get('arch', '?')}"
    if student.get("width") is not None:
        title += f" (width {student['width']:g})"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in job.metrics.items():
        if not isinstance(value, int | float):
            shown = str(value)
        elif key.endswith(
            ("accuracy", "agreement_synthetic", "agreement_eval", "ratio", "estimate")
        ):
            shown = f"{value:.4f}"
        elif key.endswith("parameters") or key == "num_samples":
            shown = f"{int(value):,}"
        else:
            shown = f"{value:.2f}"
        table.add_row(key, shown)
    return table


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------


def _limit(value: int) -> int:
    if value < 1:
        raise _bad_input("--limit must be at least 1")
    return value


def _jobs_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    from itertools import islice

    limit = _limit(args.limit)
    jobs = list(
        islice(
            client.jobs.list(status=args.status, teacher_id=args.teacher, limit=min(limit, 100)),
            limit,
        )
    )
    if out.json:
        out.emit([j.raw for j in jobs])
        return EXIT_OK
    table = Table()
    for column in ("id", "status", "phase", "progress", "teacher", "created"):
        table.add_column(column)
    for j in jobs:
        created = j.created_at.strftime("%Y-%m-%d %H:%M") if j.created_at else ""
        table.add_row(j.id, j.status, j.phase, f"{j.progress:.0%}", j.teacher_id, created)
    out.console.print(table)
    return EXIT_OK


def _jobs_show(client: Client, args: argparse.Namespace, out: Output) -> int:
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
        out.console.print(_metrics_table(job))
    return EXIT_OK


def _jobs_cancel(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.jobs.cancel(args.job_id)
    if out.json:
        out.emit(job.raw)
    elif job.finished:
        out.result(f"job {job.id} {job.status}")
    else:
        out.result(f"job {job.id}: cancel requested (it stops at its next step)")
    return EXIT_OK


def _jobs_events(client: Client, args: argparse.Namespace, out: Output) -> int:
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


def _jobs_download(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.jobs.get(args.job_id)
    if job.status != JobStatus.SUCCEEDED:
        # Refuse up front with the job's own state: clearer than the service's 409.
        code = STATUS_EXIT.get(job.status, EXIT_ERROR)
        return out.error(
            f"job {job.id} is {job.status}; only a succeeded job has artifacts to download",
            code,
            "conflict",
        )
    target = args.output or Path(args.artifact)
    with _transfer_bar(out, f"downloading {args.artifact}") as progress:
        path = client.jobs.download(job.id, args.artifact, target, on_progress=progress)
    artifact = {a.name: a for a in client.jobs.artifacts(job.id)}.get(args.artifact)
    sha = artifact.sha256 if artifact else None
    if out.json:
        out.emit({"path": str(path.resolve()), "name": args.artifact, "sha256": sha})
    else:
        out.result(f"wrote {path} (sha256 {sha}, verified)")
    return EXIT_OK


def _jobs_wait(client: Client, args: argparse.Namespace, out: Output) -> int:
    document: dict[str, Any] = {"job": None, "student": None}
    return _follow(client, args.job_id, args, out, document, download=args.output is not None)


def _jobs_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.jobs.delete(args.job_id)
    if out.json:
        out.emit({"id": args.job_id, "deleted": True})
    else:
        out.result(f"deleted job {args.job_id}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# teachers, data sets, catalogue
# --------------------------------------------------------------------------------------------


def _teachers_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    from itertools import islice

    limit = _limit(args.limit)
    teachers = list(islice(client.teachers.list(limit=min(limit, 100)), limit))
    if out.json:
        out.emit([t.raw for t in teachers])
        return EXIT_OK
    table = Table()
    for column in ("id", "name", "input shape", "classes", "parameters", "size"):
        table.add_column(column)
    for t in teachers:
        table.add_row(
            t.id,
            t.name or "",
            "x".join(str(d) for d in t.input_shape),
            str(t.num_classes),
            f"{t.parameters:,}",
            _size(t.size_bytes),
        )
    out.console.print(table)
    return EXIT_OK


def _teachers_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    teacher = client.teachers.get(args.teacher_id)
    if out.json:
        out.emit(teacher.raw)
        return EXIT_OK
    for key in ("id", "name", "input_shape", "num_classes", "parameters", "sha256", "size_bytes"):
        out.result(f"{key:<12} {teacher.raw.get(key)}")
    out.result(f"{'created_at':<12} {teacher.created_at}")
    return EXIT_OK


def _teachers_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.teachers.delete(args.teacher_id)
    if out.json:
        out.emit({"id": args.teacher_id, "deleted": True})
    else:
        out.result(f"deleted teacher {args.teacher_id}")
    return EXIT_OK


def _teachers_upload(client: Client, args: argparse.Namespace, out: Output) -> int:
    from cake_client import shape_list

    if not args.teacher.is_file():
        raise _bad_input(f"teacher file not found: {args.teacher}")
    try:
        shape = shape_list(args.input_shape)
    except ValueError as exc:
        raise _bad_input(str(exc)) from None
    with _transfer_bar(out, f"uploading {args.teacher.name}") as progress:
        teacher = client.teachers.upload(
            args.teacher,
            shape,
            name=args.name or args.teacher.name,
            num_classes=args.num_classes,
            on_progress=progress,
        )
    if out.json:
        out.emit(teacher.raw)
    else:
        out.result(teacher.id)
    return EXIT_OK


def _datasets_upload(client: Client, args: argparse.Namespace, out: Output) -> int:
    if not args.file.is_file():
        raise _bad_input(f"data set file not found: {args.file}")
    with _transfer_bar(out, f"uploading {args.file.name}") as progress:
        dataset = client.datasets.upload(
            args.file, name=args.name or args.file.name, on_progress=progress
        )
    if out.json:
        out.emit(dataset.raw)
    else:
        out.result(
            f"{dataset.id}: {dataset.num_examples} examples, input "
            f"{'x'.join(str(d) for d in dataset.input_shape)}, {dataset.num_classes} classes"
        )
    return EXIT_OK


def _datasets_list(client: Client, args: argparse.Namespace, out: Output) -> int:
    from itertools import islice

    limit = _limit(args.limit)
    datasets = list(islice(client.datasets.list(limit=min(limit, 100)), limit))
    if out.json:
        out.emit([d.raw for d in datasets])
        return EXIT_OK
    table = Table()
    for column in ("id", "name", "examples", "input shape", "classes"):
        table.add_column(column)
    for d in datasets:
        shape = "x".join(str(x) for x in d.input_shape)
        table.add_row(d.id, d.name or "", str(d.num_examples), shape, str(d.num_classes))
    out.console.print(table)
    return EXIT_OK


def _datasets_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    dataset = client.datasets.get(args.dataset_id)
    if out.json:
        out.emit(dataset.raw)
    else:
        for key, value in dataset.raw.items():
            out.result(f"{key:<13} {value}")
    return EXIT_OK


def _architectures(client: Client, args: argparse.Namespace, out: Output) -> int:
    archs = client.architectures()
    if out.json:
        out.emit([a.raw for a in archs])
        return EXIT_OK
    table = Table()
    for column in ("name", "input ranks", "default for", "description"):
        table.add_column(column)
    for a in archs:
        table.add_row(
            a.name,
            ",".join(map(str, a.input_ranks)),
            ",".join(map(str, a.default_for_ranks)),
            a.description,
        )
    out.console.print(table)
    return EXIT_OK
