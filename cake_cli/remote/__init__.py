"""``cake submit``, ``cake jobs``, ``cake teachers``, ``cake datasets``: a running service from
a terminal or a pipeline, built on :mod:`cake_client`.

Every command takes ``--url`` (default ``$CAKE_URL``, else http://127.0.0.1:8000) and
``--json``; the API key comes from ``$CAKE_API_KEY``. With ``--json`` stdout carries exactly one
JSON document (``jobs events`` prints one event per line) built from what the service sent, and
nothing else, so pipelines can parse it.

Exit codes are the contract a pipeline branches on, so they are fixed here (and named in
:mod:`cake_cli.remote.output`):

====  ============================================================================
0     done (for a job: it succeeded)
1     other error (server error, conflict, checksum mismatch, wait timed out, an ONNX or
      int8 student the job did not keep)
2     bad input: missing file, bad shape or spec, unknown id, 4xx from the service
3     the job failed
4     the job was canceled
5     the service is unreachable (after retries) or not ready
6     unauthorized (missing or wrong CAKE_API_KEY)
130   interrupted (Ctrl-C) and the job left running
====  ============================================================================

Errors are one line on stderr (with ``--json``, one line of JSON), never a traceback.

The modules, by job: :mod:`~cake_cli.remote.output` (exit codes, errors, where output goes),
:mod:`~cake_cli.remote.listing` (the one ``list`` handler), :mod:`~cake_cli.remote.follow`
(following a job to its end), :mod:`~cake_cli.remote.submit`, :mod:`~cake_cli.remote.jobs` and
:mod:`~cake_cli.remote.catalog` (the commands). Each command's parser binds its handler where
it is defined (:func:`~cake_cli.remote.parsing.add_command`); :func:`dispatch` opens the client
and runs it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cake_cli.remote import catalog, jobs, submit
from cake_cli.remote.output import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    CliError,
    Output,
    bad_input,
)
from cake_cli.remote.parsing import common_parser
from cake_client._http import DEFAULT_MAX_RETRIES

if TYPE_CHECKING:
    from cake_cli.remote.output import Handler

COMMANDS = ("submit", "jobs", "teachers", "datasets", "architectures")


def add_parsers(sub: Any) -> None:
    """Register ``submit``, ``jobs``, ``teachers``, ``datasets`` and ``architectures``."""
    common = common_parser()
    submit.add_parser(sub, common)
    jobs.add_parsers(sub, common)
    catalog.add_parsers(sub, common)


def exit_code_for(exc: BaseException) -> tuple[int, str | None]:
    """The exit code (and problem code) for an exception of the client."""
    from cake_client import (
        ArtifactUnavailable,
        CakeAPIError,
        NotReady,
        ServiceUnreachable,
        Unauthorized,
    )

    if isinstance(exc, ArtifactUnavailable):  # the job succeeded but did not keep that file
        return EXIT_ERROR, "artifact_unavailable"
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


def _handler(args: argparse.Namespace) -> Handler:
    """The handler the parser bound to the command (``set_defaults(handler=...)``)."""
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        sub = getattr(args, f"{args.command}_command", None)
        raise bad_input(f"unknown command: {args.command} {sub or ''}".strip())
    return handler


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
