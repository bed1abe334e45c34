"""``cake``: the command line entry point.

``cake distill`` runs a whole job locally through :func:`cake_core.pipeline.run_job`, with a
progress bar per phase and a metrics table at the end. Bad input ends with one clear line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from cake_cli import admin, remote, service
from cake_cli.spec_args import SpecFileError, add_spec_arguments, read_spec_file
from cake_cli.tables import metrics_table

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELED = 130

err_console = Console(stderr=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cake", description="Data-free knowledge distillation (CAKE)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    distill = sub.add_parser(
        "distill",
        help="distil a TorchScript teacher into a smaller student, locally",
        description="Distil a TorchScript teacher into a student without any training data.",
    )
    distill.add_argument("teacher", type=Path, help="TorchScript archive of the teacher")
    add_spec_arguments(distill, "student architecture (default: by input rank)")
    distill.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA if present)")
    distill.add_argument("-o", "--output", type=Path, default=Path("student.pt"))
    distill.add_argument(
        "--checkpoints",
        type=Path,
        help="folder for checkpoints; rerun to resume an interrupted job",
    )
    distill.add_argument("--quiet", action="store_true", help="no progress bars")
    service.add_parsers(sub)
    admin.add_parsers(sub)
    remote.add_parsers(sub)
    return parser


def _load_spec(args: argparse.Namespace) -> dict[str, Any]:
    try:
        spec = read_spec_file(args.spec)
    except SpecFileError as exc:
        raise _BadInput(str(exc)) from None
    if args.preset is not None:
        spec["preset"] = args.preset
    if args.seed is not None:
        spec["seed"] = args.seed
    if args.input_range is not None:
        spec["input_range"] = list(args.input_range)
    if args.student is not None or args.width is not None:
        student = dict(spec.get("student") or {})
        if args.student is not None:
            student["arch"] = args.student
        if args.width is not None:
            student["width"] = args.width
        spec["student"] = student
    return spec


class _BadInput(Exception):
    pass


def _distill(args: argparse.Namespace) -> int:
    from cake_core.device import default_runtime
    from cake_core.errors import CakeError, JobCanceled, SpecError
    from cake_core.pipeline import DirectoryCheckpoints, run_job
    from cake_core.pipeline import Progress as JobProgress
    from cake_core.shapes import parse_input_shape

    console = Console()
    try:
        if not args.teacher.is_file():
            raise _BadInput(f"teacher file not found: {args.teacher}")
        if args.eval is not None and not args.eval.is_file():
            raise _BadInput(f"evaluation file not found: {args.eval}")
        input_shape = parse_input_shape(args.input_shape)
        spec = _load_spec(args)
        runtime = default_runtime(args.device)
    except (_BadInput, SpecError, RuntimeError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False)
        return EXIT_BAD_INPUT

    output = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cake-", dir=output.parent))
    checkpoints = DirectoryCheckpoints(args.checkpoints) if args.checkpoints else None
    bars = Progress(
        TextColumn("{task.description:<13}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[message]}"),
        console=console,
        disable=args.quiet,
    )
    tasks: dict[str, TaskID] = {}

    def on_progress(p: JobProgress) -> None:
        if p.event is not None:  # a log line (which student, and why), not progress
            if p.level == "warning":
                err_console.print(f"[yellow]warning:[/yellow] {p.message}", highlight=False)
            elif not args.quiet:
                bars.console.print(p.message, highlight=False)
            return
        if p.phase not in tasks:
            for task in tasks.values():
                bars.update(task, completed=1.0)
            tasks[p.phase] = bars.add_task(p.phase, total=1.0, message="")
        bars.update(tasks[p.phase], completed=p.phase_fraction, message=p.message)

    try:
        with bars:
            result = run_job(
                args.teacher,
                input_shape,
                spec,
                work,
                eval_path=args.eval,
                runtime=runtime,
                on_progress=on_progress,
                checkpoints=checkpoints,
            )
    except JobCanceled:
        err_console.print("[yellow]canceled[/yellow]")
        shutil.rmtree(work, ignore_errors=True)
        return EXIT_CANCELED
    except CakeError as exc:
        err_console.print(f"[red]error ({exc.code}):[/red] {exc.message}", highlight=False)
        shutil.rmtree(work, ignore_errors=True)
        return EXIT_BAD_INPUT if exc.code in _INPUT_CODES else EXIT_FAILED
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        shutil.rmtree(work, ignore_errors=True)
        return EXIT_CANCELED

    written = _place_artifacts(result.artifacts, output)
    shutil.rmtree(work, ignore_errors=True)
    student = result.spec.student
    console.print(metrics_table(result.metrics, student.arch, student.width))
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    missing = _missing_student_file(result.artifacts, output)
    if missing:
        err_console.print(f"[red]error:[/red] {missing}", highlight=False)
        return EXIT_FAILED
    return EXIT_OK


_INPUT_CODES = {"validation_error", "teacher_invalid", "dataset_invalid"}


def _place_artifacts(artifacts: dict[str, Path], output: Path) -> list[Path]:
    """The student file ``output`` asks for by its extension goes to ``output``
    (``.onnx``: ``student.onnx``, ``.int8.onnx``: ``student.int8.onnx``, else ``student.pt``);
    the student's other forms beside it under the same stem (``model.pt``, ``model.onnx``,
    ``model.int8.onnx``), and the other artifacts prefixed with the stem
    (``model.manifest.json``).

    ``report.md`` links its images by name, so its links follow them to their new names.
    """
    from cake_core.report import relink_report
    from cake_shared.student_files import STUDENT_FILES, student_file_for, student_stem

    wanted, stem = student_file_for(output), student_stem(output)
    written = []
    renames = {}
    for name, path in artifacts.items():
        if name == wanted:
            target = output
        elif name in STUDENT_FILES:
            target = output.with_name(stem + name.removeprefix("student"))
        else:
            target = output.with_name(f"{stem}.{name}")
        shutil.move(str(path), target)
        written.append(target)
        renames[name] = target.name
    if "report.md" in artifacts:
        relink_report(output.with_name(renames["report.md"]), renames)
    return written


def _missing_student_file(artifacts: dict[str, Path], output: Path) -> str:
    """Why the student file ``output`` asks for was not produced ("" when it was), as the
    manifest's ``deployment`` section says (int8 not kept, ONNX export failed)."""
    from cake_shared.student_files import missing_reason, student_file_for, student_stem

    wanted = student_file_for(output)
    if wanted in artifacts:
        return ""
    try:
        manifest_path = output.with_name(f"{student_stem(output)}.manifest.json")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    reason = missing_reason(manifest, wanted)
    return f"no {wanted} to write to {output}: {reason} (the other files were written)"


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = _parser().parse_args(argv)
    if args.command == "distill":
        return _distill(args)
    if args.command in service.COMMANDS:
        return service.dispatch(args)
    if args.command in admin.COMMANDS:
        return admin.dispatch(args)
    if args.command in remote.COMMANDS:
        return remote.dispatch(args)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
