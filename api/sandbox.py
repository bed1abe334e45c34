"""Run torch code for the API in a child process, with a wall-clock timeout and a memory cap.

Why a child: the API process must not import torch (~200 MB of RSS each), and an uploaded model
is untrusted: its forward pass may loop forever, crash the interpreter or eat all memory. None of
that may hang or kill the API.

Why a fork server: importing torch takes ~2 s. Children are forked from a server process that
imported torch once (``multiprocessing``'s forkserver with a preload), so each check starts in
~0.1 s. The server itself never runs a model, so forking it is safe (no thread pools yet). The
child sets ``RLIMIT_AS`` before touching the file, silences stdout/stderr (TorchScript ``print``
would spam the API log), and reports its progress stages through a pipe.

As with any ``multiprocessing`` start method other than fork, the parent's ``__main__`` module is
imported in the children, so a script that creates the app must guard its own code with
``if __name__ == "__main__":`` (uvicorn, the ``cake`` CLI and pytest do).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

log = logging.getLogger("cake.api.sandbox")

_PRELOAD = ["cake_core.teacher", "cake_core.students", "api.teacher_check"]
_ctx_lock = threading.Lock()
_ctx: Any = None


def _context() -> Any:
    """The forkserver context (preloading torch) or, where there is none, spawn."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            try:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(_PRELOAD)
            except ValueError:  # pragma: no cover - platforms without fork
                ctx = multiprocessing.get_context("spawn")
            _ctx = ctx
        return _ctx


def warm_up() -> None:
    """Start the fork server now (it imports torch, ~2 s) so the first upload does not wait."""
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with contextlib.suppress(Exception):
            forkserver.ensure_running()


@dataclass
class SandboxResult:
    """What came back: ``ok`` with ``value``, or ``timeout``/``crashed`` with the last stage."""

    outcome: Literal["ok", "timeout", "crashed"]
    value: Any = None
    stage: str | None = None
    exitcode: int | None = None
    seconds: float = 0.0


def _child_main(
    conn: Connection, target: str, args: tuple[Any, ...], memory_bytes: int | None
) -> None:
    """Entry point in the child: cap memory, silence output, run ``target``, send the result."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if memory_bytes:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    def report(stage: str) -> None:
        conn.send(("stage", stage))

    module_name, func_name = target.rsplit(":", 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        value = func(*args, report=report)
        conn.send(("result", value))
    except MemoryError:
        conn.send(("memory", None))
    except BaseException as exc:  # report what failed, never a traceback
        conn.send(("error", type(exc).__name__))
    finally:
        conn.close()


def run(
    target: str,
    *args: Any,
    timeout_s: float,
    memory_bytes: int | None = None,
) -> SandboxResult:
    """Run ``module:function(*args, report=...)`` in a child; blocking (call from a thread).

    The timeout counts from the child's start; on expiry the child is SIGKILLed. A child that
    dies without answering (segfault, abort, OOM killer) gives ``crashed`` with its exit code.
    Exceptions in the child come back as ``("error", class name)`` values, not tracebacks.
    """
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_child_main, args=(child_conn, target, args, memory_bytes), daemon=True
    )
    try:
        process.start()
    except Exception as exc:  # the fork server could not start: a server problem
        log.error("sandbox could not start a child: %s", exc)
        parent_conn.close()
        child_conn.close()
        return SandboxResult("crashed", value=type(exc).__name__)
    child_conn.close()
    started = time.monotonic()
    deadline = started + timeout_s
    stage: str | None = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return SandboxResult("timeout", stage=stage, seconds=time.monotonic() - started)
            try:
                if not parent_conn.poll(min(remaining, 0.5)):
                    if not process.is_alive() and not parent_conn.poll(0):
                        process.join(1)
                        return SandboxResult(
                            "crashed",
                            stage=stage,
                            exitcode=process.exitcode,
                            seconds=time.monotonic() - started,
                        )
                    continue
                kind, value = parent_conn.recv()
            except (EOFError, OSError):
                process.join(1)
                return SandboxResult(
                    "crashed",
                    stage=stage,
                    exitcode=process.exitcode,
                    seconds=time.monotonic() - started,
                )
            if kind == "stage":
                stage = value
                continue
            seconds = time.monotonic() - started
            if kind == "result":
                return SandboxResult("ok", value=value, stage=stage, seconds=seconds)
            if kind == "memory":
                return SandboxResult("crashed", value="memory", stage=stage, seconds=seconds)
            return SandboxResult("crashed", value=value, stage=stage, seconds=seconds)
    finally:
        if process.is_alive():
            with contextlib.suppress(Exception):
                process.kill()
        process.join(5)
        parent_conn.close()
        with contextlib.suppress(Exception):
            process.close()


def signal_name(exitcode: int | None) -> str | None:
    """``-11`` -> ``"SIGSEGV"``; None for a normal exit."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"
