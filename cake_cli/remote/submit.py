"""``cake submit``: upload a teacher (and an evaluation set), create a job, maybe follow it.

Everything that can be checked locally (files, shape, spec, flags) is checked before the first
byte is sent, so a typo never costs an upload.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cake_cli.remote.follow import follow
from cake_cli.remote.output import EXIT_OK, Output, bad_input, size_text, transfer_bar
from cake_cli.remote.parsing import add_command
from cake_cli.spec_args import SpecFileError, add_spec_arguments, read_spec_file

if TYPE_CHECKING:
    from cake_client import Client


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``submit``, bound to :func:`submit`."""
    submit_p = add_command(
        sub,
        "submit",
        common,
        submit,
        help="upload a teacher to the service and create a distillation job",
        description="Upload a TorchScript teacher (and an evaluation set), create a job and, "
        "with --wait, follow it live, download the student (sha256 verified) and print its "
        "metrics; -o student.onnx or -o student.int8.onnx downloads the ONNX or int8 student "
        "(exit code 1 with the reason when the job did not keep it). Exit codes: 0 succeeded, "
        "3 failed, 4 canceled, 2 bad input, 5 service unreachable, 6 unauthorized, "
        "130 interrupted (job left running).",
    )
    submit_p.add_argument("teacher", type=Path, help="TorchScript archive of the teacher")
    add_spec_arguments(submit_p, "student architecture (see `cake architectures`)")
    submit_p.add_argument("--name", help="a label for the teacher")
    submit_p.add_argument("--metadata", help="JSON object stored with the job")
    submit_p.add_argument(
        "--callback-url", help="the service POSTs the job here, signed, when it ends"
    )
    submit_p.add_argument(
        "--mlflow-tracking-uri",
        help="log the succeeded job to this MLflow server (where the operator allows it)",
    )
    submit_p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit_p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="with --wait: where to write the student; the extension picks the file "
        "(.onnx: student.onnx, .int8.onnx: student.int8.onnx, else student.pt)",
    )
    submit_p.add_argument(
        "--artifact", help="with --wait: download this artifact instead (e.g. report.md)"
    )
    submit_p.add_argument(
        "--wait-timeout", type=float, help="with --wait: give up waiting after this many seconds"
    )
    submit_p.add_argument("--quiet", action="store_true", help="no progress output")


def load_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec file (if any) with the flags laid over it; bad files are bad input."""
    from cake_client import build_spec

    try:
        spec = read_spec_file(args.spec)
    except SpecFileError as exc:
        raise bad_input(str(exc)) from None
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
            raise bad_input(f"--metadata is not valid JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise bad_input("--metadata must be a JSON object")
    return build_spec(
        spec,
        preset=args.preset,
        student=student or None,
        seed=args.seed,
        metadata=metadata,
        input_range=args.input_range,
    )


def submit(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Upload, create the job, and with ``--wait`` follow it (exit code by its status)."""
    from cake_client import shape_list

    # Everything that can be checked here is checked before the first byte is sent.
    if not args.teacher.is_file():
        raise bad_input(f"teacher file not found: {args.teacher}")
    if args.eval is not None and not args.eval.is_file():
        raise bad_input(f"evaluation file not found: {args.eval}")
    if args.output is not None and not args.wait:
        raise bad_input("-o/--output needs --wait (the student exists once the job succeeded)")
    if args.artifact is not None and not args.wait:
        raise bad_input("--artifact needs --wait (artifacts exist once the job succeeded)")
    try:
        shape = shape_list(args.input_shape)
    except ValueError as exc:
        raise bad_input(str(exc)) from None
    spec = load_spec(args)

    with transfer_bar(out, f"uploading {args.teacher.name}") as progress:
        teacher = client.teachers.upload(
            args.teacher, shape, name=args.name or args.teacher.name, on_progress=progress
        )
    out.info(
        f"teacher {teacher.id}: {teacher.num_classes} classes, {teacher.parameters:,} "
        f"parameters ({size_text(teacher.size_bytes)})"
    )
    dataset = None
    if args.eval is not None:
        with transfer_bar(out, f"uploading {args.eval.name}") as progress:
            dataset = client.datasets.upload(args.eval, name=args.eval.name, on_progress=progress)
        out.info(f"evaluation set {dataset.id}: {dataset.num_examples} examples")
        spec["eval_dataset_id"] = dataset.id
    job = client.jobs.create(
        teacher.id,
        spec=spec,
        callback_url=args.callback_url,
        mlflow_tracking_uri=args.mlflow_tracking_uri,
    )
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
    return follow(client, job.id, args, out, document, download=True)
