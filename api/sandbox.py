"""Run torch code for the API in a child process, with wall-clock, CPU-time and memory limits.

The one sandbox runner of the service: :func:`run` calls ``module:function`` in a child and
knows nothing of what it runs; its callers keep their child functions in their own modules, name
them here by string and say what the fork server should preload (:func:`preload`).

Why a child: the API process must not import torch (~200 MB of RSS each), and what a child runs
may be untrusted (an uploaded model's forward pass may loop forever, crash the interpreter or eat
all memory). None of that may hang or kill the API.

Why a fork server: importing torch takes ~2 s. Children are forked from a server process that
imported the modules callers named with :func:`preload` once (``multiprocessing``'s forkserver),
so each child starts in ~0.1 s. The server itself never runs the target, so forking it is safe
(no thread pools yet). Before running the target the child

* caps (with :mod:`cake_shared.sandbox`, shared with the worker's engine child) its address
  space (``RLIMIT_AS``), CPU time (``RLIMIT_CPU``: a second line behind the
  parent's wall-clock timeout, for a target that spins several threads), the size of
  any file it writes (``RLIMIT_FSIZE`` 64 MiB) and core dumps;
* moves into a new, empty network namespace where the kernel allows it (root, or unprivileged
  user namespaces): no interface but a down loopback, so nothing can be reached; where the
  kernel refuses (an unprivileged container) the target still runs and
  ``SandboxResult.network_isolated`` says so, for the caller to weigh;
* silences stdout/stderr (a model's ``print`` would spam the API log), and passes the target a
  ``report`` callback whose progress stages reach the parent through a pipe;
* takes the caller's settings as absolute ``CAKE_*`` values (``env``, normally
  ``Settings.child_env()``), so whatever it reads sees the same data folder, database and store
  as the API, whatever the fork server's working folder and environment.

As with any ``multiprocessing`` start method other than fork, the parent's ``__main__`` module is
imported in the children, so a script that creates the app must guard its own code with
``if __name__ == "__main__":`` (uvicorn, the ``cake`` CLI and pytest do).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import math
import multiprocessing
import os
import resource
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

from cake_shared.sandbox import isolate_network, set_limits

log = logging.getLogger("cake.api.sandbox")

_preload: list[str] = []
_ctx_lock = threading.Lock()
_ctx: Any = None


def preload(*modules: str) -> None:
    """Have the fork server import ``modules`` once, so that children start without importing.

    A module whose functions are run here calls this at import time, naming itself and what it
    imports in the child (torch). It must happen before the server starts (:func:`warm_up` or
    the first :func:`run`); a module named later is imported by each child instead: slower, and
    counted against that child's CPU-time and memory limits.
    """
    with _ctx_lock:
        _preload.extend(m for m in modules if m not in _preload)
        if _ctx is not None and _ctx.get_start_method() == "forkserver":
            _ctx.set_forkserver_preload(list(_preload))


def _context() -> Any:
    """The forkserver context (with the preloaded modules) or, where there is none, spawn."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            try:
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(list(_preload))
            except ValueError:  # pragma: no cover - platforms without fork
                ctx = multiprocessing.get_context("spawn")
            _ctx = ctx
        return _ctx


def warm_up() -> None:
    """Start the fork server now (it imports the preloaded modules: torch, ~2 s), so that the
    first request does not wait."""
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
    network_isolated: bool | None = None


def _child_main(
    conn: Connection,
    target: str,
    args: tuple[Any, ...],
    memory_bytes: int | None,
    cpu_seconds: int | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Entry point in the child: isolate, limit, silence output, run ``target``, send the result."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ.update(env or {})
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    conn.send(("isolation", isolate_network()))
    set_limits(memory_bytes, cpu_seconds)

    def report(stage: str) -> None:
        conn.send(("stage", stage))

    module_name, func_name = target.rsplit(":", 1)
    answer: tuple[str, Any]
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        answer = ("result", func(*args, report=report))
    except MemoryError:
        answer = ("memory", None)
    except BaseException as exc:  # report what failed, never a traceback
        answer = ("error", type(exc).__name__)
    # Sent outside the handlers: by now the traceback, and the memory its frames held, is freed;
    # sent from within ``except MemoryError`` the answer itself could find no memory.
    try:
        conn.send(answer)
    except MemoryError:  # no memory to pickle the result
        conn.send(("memory", None))
    except BaseException as exc:  # a result that cannot be pickled
        conn.send(("error", type(exc).__name__))
    finally:
        conn.close()


def cpu_limit(timeout_s: float) -> int:
    """The CPU time :func:`run` allows by default: the timeout rounded up, plus one second."""
    return math.ceil(timeout_s) + 1


def run(
    target: str,
    *args: Any,
    timeout_s: float,
    memory_bytes: int | None = None,
    cpu_seconds: int | None = None,
    env: dict[str, str] | None = None,
) -> SandboxResult:
    """Run ``module:function(*args, report=...)`` in a child; blocking (call from a thread).

    The timeout counts from the child's start; on expiry the child is SIGKILLed. CPU time is
    capped at ``cpu_seconds`` (default: :func:`cpu_limit` of the timeout), so a child
    burning several cores dies of SIGXCPU even before the wall clock runs out. A child that dies
    without answering (segfault, abort, OOM killer, CPU limit) gives ``crashed`` with its exit
    code. Exceptions in the child come back as ``("error", class name)`` values, not tracebacks.
    ``env`` is set in the child's environment before ``target`` runs (the settings' absolute
    ``CAKE_*`` locations).
    """
    if cpu_seconds is None:
        cpu_seconds = cpu_limit(timeout_s)
    ctx = _context()
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_child_main,
        args=(child_conn, target, args, memory_bytes, cpu_seconds, dict(env or {})),
        daemon=True,
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
    isolated: bool | None = None

    def result(outcome: Literal["ok", "timeout", "crashed"], **kw: Any) -> SandboxResult:
        return SandboxResult(
            outcome,
            stage=stage,
            seconds=time.monotonic() - started,
            network_isolated=isolated,
            **kw,
        )

    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result("timeout")
            try:
                if not parent_conn.poll(min(remaining, 0.5)):
                    if not process.is_alive() and not parent_conn.poll(0):
                        process.join(1)
                        return result("crashed", exitcode=process.exitcode)
                    continue
                kind, value = parent_conn.recv()
            except (EOFError, OSError):
                process.join(1)
                return result("crashed", exitcode=process.exitcode)
            if kind == "stage":
                stage = value
                continue
            if kind == "isolation":
                isolated = bool(value)
                continue
            if kind == "result":
                return result("ok", value=value)
            if kind == "memory":
                return result("crashed", value="memory")
            return result("crashed", value=value)
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


def probe_isolation(host: str, port: int, report: Any = None) -> dict[str, Any]:
    """What a sandboxed child can do: its resource limits and whether ``host:port`` is reachable.

    Run through :func:`run` (``"api.sandbox:probe_isolation"``) by the tests and by an operator
    who wants to see the sandbox of a given deployment.
    """
    names = {"as": resource.RLIMIT_AS, "cpu": resource.RLIMIT_CPU, "fsize": resource.RLIMIT_FSIZE}
    limits = {name: list(resource.getrlimit(which)) for name, which in names.items()}
    try:
        with socket.create_connection((host, port), timeout=2):
            connect = "connected"
    except OSError as exc:
        connect = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return {"limits": limits, "connect": connect}


def child_settings(report: Any = None) -> dict[str, str]:
    """The ``CAKE_*`` variables a sandboxed child sees (``"api.sandbox:child_settings"``): the
    locations the caller handed it, for tests and for an operator checking a deployment."""
    return {k: v for k, v in os.environ.items() if k.startswith("CAKE_")}
