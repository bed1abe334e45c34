"""How a remote command is declared: the flags they all take, and its handler bound to its
parser, so the command tree is written once (no table that repeats it)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cake_client._http import DEFAULT_MAX_RETRIES

if TYPE_CHECKING:
    from cake_cli.remote.output import Handler


def common_parser() -> argparse.ArgumentParser:
    """The ``--url``, ``--json`` and ``--retries`` flags every remote command takes."""
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


def add_command(
    sub: Any, name: str, common: argparse.ArgumentParser, handler: Handler, **options: Any
) -> argparse.ArgumentParser:
    """A subcommand with the common flags, its ``handler`` bound where it is defined
    (``set_defaults``), which :func:`cake_cli.remote.dispatch` then runs."""
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], **options)
    parser.set_defaults(handler=handler)
    return parser
