"""What every remote command shares: the exit codes, the one-line errors, and where output goes.

The exit codes are the contract a pipeline branches on (the table is in :mod:`cake_cli.remote`),
so they are named once, here, and every command module reads them from this one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from cake_shared.status import JobStatus

if TYPE_CHECKING:
    from cake_client import Client

    #: What ``set_defaults(handler=...)`` binds to a subcommand: it runs with the open client.
    Handler = Callable[[Client, argparse.Namespace, "Output"], int]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_FAILED = 3
EXIT_CANCELED = 4
EXIT_UNREACHABLE = 5
EXIT_UNAUTHORIZED = 6
EXIT_INTERRUPTED = 130

#: The exit code of a finished job, by its status.
STATUS_EXIT = {
    JobStatus.SUCCEEDED: EXIT_OK,
    JobStatus.FAILED: EXIT_FAILED,
    JobStatus.CANCELED: EXIT_CANCELED,
}


class CliError(Exception):
    """A failure with its exit code, reported as one line by :func:`cake_cli.remote.dispatch`."""

    def __init__(self, message: str, exit_code: int, code: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.code = code


def bad_input(message: str) -> CliError:
    """Exit code 2: what the user typed is wrong, so retrying the same command cannot help."""
    return CliError(message, EXIT_BAD_INPUT, "bad_input")


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

    def deleted(self, kind: str, object_id: str) -> int:
        """What every ``delete`` command answers: the same shape for jobs and teachers."""
        if self.json:
            self.emit({"id": object_id, "deleted": True})
        else:
            self.result(f"deleted {kind} {object_id}")
        return EXIT_OK


@contextmanager
def transfer_bar(out: Output, label: str) -> Iterator[Callable[[int, int], None] | None]:
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


def size_text(n: int) -> str:
    """Bytes for people, in powers of 1000 (``1.2 MB``), as the service's quotas count them."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def shape_text(shape: Sequence[int]) -> str:
    """An input shape as the tables show it: ``1x28x28``."""
    return "x".join(str(d) for d in shape)
