"""One ``list`` command for every resource: ``--json`` prints what the service sent, otherwise
a table, one row an object.

``jobs list``, ``teachers list``, ``datasets list`` and ``architectures`` differ only in what
they fetch and which columns they show; :func:`list_handler` is the rest, written once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from rich.table import Table

from cake_cli.remote.output import EXIT_OK, Output, bad_input

if TYPE_CHECKING:
    from cake_cli.remote.output import Handler
    from cake_client import Client

#: The largest page the API serves; a longer ``--limit`` is read in several pages.
MAX_PAGE = 100


class Listed(Protocol):
    """An object of the client that keeps the service's JSON (``Job``, ``Teacher``, …)."""

    raw: dict[str, Any]


L = TypeVar("L", bound=Listed)


def newest(args: argparse.Namespace, pages: Callable[[int], Iterable[L]]) -> list[L]:
    """The first ``--limit`` objects of a list endpoint; ``pages(n)`` lists them ``n`` a page."""
    limit = args.limit
    if limit < 1:
        raise bad_input("--limit must be at least 1")
    return list(islice(pages(min(limit, MAX_PAGE)), limit))


def list_handler(
    fetch: Callable[[Client, argparse.Namespace], Iterable[L]],
    columns: Sequence[str],
    row: Callable[[L], Sequence[str]],
) -> Handler:
    """A handler that prints ``fetch``'s objects: their JSON with --json, else a table."""

    def handler(client: Client, args: argparse.Namespace, out: Output) -> int:
        items = list(fetch(client, args))
        if out.json:
            out.emit([item.raw for item in items])
            return EXIT_OK
        table = Table()
        for column in columns:
            table.add_column(column)
        for item in items:
            table.add_row(*row(item))
        out.console.print(table)
        return EXIT_OK

    return handler
