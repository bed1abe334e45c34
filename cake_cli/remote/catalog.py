"""``cake teachers``, ``cake datasets`` and ``cake architectures``: what jobs are made from.

Each subcommand is bound to its handler where its parser is defined
(:func:`~cake_cli.remote.parsing.add_command`); the list commands are
:func:`~cake_cli.remote.listing.list_handler` with their own columns.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cake_cli.remote.listing import list_handler, newest
from cake_cli.remote.output import (
    EXIT_OK,
    Output,
    bad_input,
    shape_text,
    size_text,
    transfer_bar,
)
from cake_cli.remote.parsing import add_command

if TYPE_CHECKING:
    from cake_client import Architecture, Client, Dataset, Teacher


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``teachers``, ``datasets`` and ``architectures``, each bound to its handler."""
    teachers = sub.add_parser("teachers", help="list, inspect, upload and delete teachers")
    t_sub = teachers.add_subparsers(dest="teachers_command", required=True)
    p = add_command(t_sub, "list", common, teachers_list, help="teachers, newest first")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p = add_command(t_sub, "show", common, teachers_show, help="one teacher")
    p.add_argument("teacher_id")
    p = add_command(t_sub, "delete", common, teachers_delete, help="delete a teacher")
    p.add_argument("teacher_id")
    p = add_command(t_sub, "upload", common, teachers_upload, help="upload a teacher (no job)")
    p.add_argument("teacher", type=Path)
    p.add_argument("--input-shape", required=True, help="e.g. 1,28,28")
    p.add_argument("--name", help="a label")
    p.add_argument("--num-classes", type=int, help="must equal what the service's probe finds")

    datasets = sub.add_parser("datasets", help="upload and list evaluation data sets")
    d_sub = datasets.add_subparsers(dest="datasets_command", required=True)
    p = add_command(d_sub, "upload", common, datasets_upload, help="upload an .npz with x and y")
    p.add_argument("file", type=Path)
    p.add_argument("--name", help="a label")
    p = add_command(d_sub, "list", common, datasets_list, help="data sets, newest first")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p = add_command(d_sub, "show", common, datasets_show, help="one data set")
    p.add_argument("dataset_id")

    add_command(
        sub,
        "architectures",
        common,
        architectures,
        help="the student architectures the service offers",
    )


# -- teachers ----------------------------------------------------------------------------------
def _newest_teachers(client: Client, args: argparse.Namespace) -> list[Teacher]:
    return newest(args, lambda page: client.teachers.list(limit=page))


def _teacher_row(t: Teacher) -> list[str]:
    return [
        t.id,
        t.name or "",
        shape_text(t.input_shape),
        str(t.num_classes),
        f"{t.parameters:,}",
        size_text(t.size_bytes),
    ]


teachers_list = list_handler(
    _newest_teachers,
    ("id", "name", "input shape", "classes", "parameters", "size"),
    _teacher_row,
)


def teachers_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    teacher = client.teachers.get(args.teacher_id)
    if out.json:
        out.emit(teacher.raw)
        return EXIT_OK
    for key in ("id", "name", "input_shape", "num_classes", "parameters", "sha256", "size_bytes"):
        out.result(f"{key:<12} {teacher.raw.get(key)}")
    out.result(f"{'created_at':<12} {teacher.created_at}")
    return EXIT_OK


def teachers_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    client.teachers.delete(args.teacher_id)
    return out.deleted("teacher", args.teacher_id)


def teachers_upload(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Upload without creating a job; prints the new id alone, for scripts to capture."""
    from cake_client import shape_list

    if not args.teacher.is_file():
        raise bad_input(f"teacher file not found: {args.teacher}")
    try:
        shape = shape_list(args.input_shape)
    except ValueError as exc:
        raise bad_input(str(exc)) from None
    with transfer_bar(out, f"uploading {args.teacher.name}") as progress:
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


# -- data sets ---------------------------------------------------------------------------------
def datasets_upload(client: Client, args: argparse.Namespace, out: Output) -> int:
    if not args.file.is_file():
        raise bad_input(f"data set file not found: {args.file}")
    with transfer_bar(out, f"uploading {args.file.name}") as progress:
        dataset = client.datasets.upload(
            args.file, name=args.name or args.file.name, on_progress=progress
        )
    if out.json:
        out.emit(dataset.raw)
    else:
        out.result(
            f"{dataset.id}: {dataset.num_examples} examples, input "
            f"{shape_text(dataset.input_shape)}, {dataset.num_classes} classes"
        )
    return EXIT_OK


def _newest_datasets(client: Client, args: argparse.Namespace) -> list[Dataset]:
    return newest(args, lambda page: client.datasets.list(limit=page))


def _dataset_row(d: Dataset) -> list[str]:
    return [d.id, d.name or "", str(d.num_examples), shape_text(d.input_shape), str(d.num_classes)]


datasets_list = list_handler(
    _newest_datasets, ("id", "name", "examples", "input shape", "classes"), _dataset_row
)


def datasets_show(client: Client, args: argparse.Namespace, out: Output) -> int:
    dataset = client.datasets.get(args.dataset_id)
    if out.json:
        out.emit(dataset.raw)
    else:
        for key, value in dataset.raw.items():
            out.result(f"{key:<13} {value}")
    return EXIT_OK


# -- the catalogue -----------------------------------------------------------------------------
def _architectures(client: Client, args: argparse.Namespace) -> list[Architecture]:
    return client.architectures()


def _architecture_row(a: Architecture) -> list[str]:
    return [
        a.name,
        ",".join(map(str, a.input_ranks)),
        ",".join(map(str, a.default_for_ranks)),
        a.description,
    ]


architectures = list_handler(
    _architectures, ("name", "input ranks", "default for", "description"), _architecture_row
)
