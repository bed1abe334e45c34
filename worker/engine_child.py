"""The engine's child process: runs one job's pipeline inside the sandbox, talks to the worker
over a pipe, and touches nothing else.

Started by :mod:`worker.engine_sandbox` as ``python -m worker.engine_child <fd>`` (a fresh
interpreter, never a fork of the worker: the worker may have initialised CUDA, and forking
after that is unsafe), with an environment that holds no secret (no database URL, no store
credentials) and the job's folder as its working directory. Before it imports torch or reads the
teacher it

1. moves into an empty network namespace (:func:`cake_shared.sandbox.isolate_network`);
2. confines the file system with Landlock: read only the interpreter, its libraries, the engine's
   code and a few system files; write only beneath the job folder
   (:func:`cake_shared.sandbox.restrict_filesystem`); that also hides other processes' ``/proc``
   entries (their environment, memory) and, on newer kernels, forbids signalling them;
3. sets rlimits: address space, CPU time, file size, open files, no core dumps.

It then says which of these took effect (``hello``) and runs the target. Everything the pipeline
needs from the service goes through the worker: progress reports, the stop flag (cancel,
shutdown, claim lost), checkpoint saves and loads (as files in the job folder that the worker
moves to and from the object store). Messages are JSON, never pickles, so that a child that was
taken over cannot run code in the worker by what it sends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cake_shared.sandbox import isolate_network, restrict_filesystem, set_limits

#: The child says it is alive at least this often while the pipeline runs (its stop check).
TICK_S = 1.0
_PR_SET_PDEATHSIG = 1
#: Largest message either side accepts (a job spec, a progress report, a result).
MAX_MESSAGE_BYTES = 16 << 20


def _jsonable(value: Any) -> Any:
    """Numbers torch or numpy hand back (0-d tensors, numpy scalars) as floats, others as text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class Parent:
    """The worker at the other end of the pipe, seen from the child."""

    def __init__(self, conn: Connection, work: Path) -> None:
        self.conn = conn
        self.work = work
        self.stop = False
        self._last_tick = 0.0

    def send(self, message: dict[str, Any]) -> None:
        self.conn.send_bytes(json.dumps(message, default=_jsonable).encode())

    def _read(self) -> dict[str, Any]:
        message = json.loads(self.conn.recv_bytes(MAX_MESSAGE_BYTES))
        if message.get("t") == "stop":
            self.stop = True
        return message

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` and wait for the worker's answer (a stop on the way is noted)."""
        self.send(message)
        while True:
            answer = self._read()
            if answer.get("t") != "stop":
                return answer

    def should_cancel(self) -> bool:
        """The pipeline's stop check: the worker's stop flag, and a sign of life for its stall
        watch (at most every ``TICK_S``)."""
        while self.conn.poll(0):
            self._read()
        now = time.monotonic()
        if now - self._last_tick >= TICK_S:
            self._last_tick = now
            self.send({"t": "tick"})
        return self.stop

    def on_progress(self, report: Any) -> None:
        self.send({"t": "progress", "report": asdict(report)})


class PipeCheckpoints:
    """The pipeline's checkpoint store in the child: each checkpoint is a file in the job folder
    that the worker uploads (save) or downloads (load); the child never sees the store."""

    def __init__(self, parent: Parent) -> None:
        self.parent = parent
        self.folder = parent.work / "checkpoints"
        self.folder.mkdir(exist_ok=True)

    def save(self, key: str, state: dict[str, Any]) -> None:
        import torch

        from cake_core.errors import JobCanceled

        fd, path = tempfile.mkstemp(suffix=".pt", dir=self.folder)
        os.close(fd)
        try:
            torch.save(state, path)
            answer = self.parent.request(
                {"t": "save", "key": key, "file": os.path.relpath(path, self.parent.work)}
            )
        finally:
            os.unlink(path)
        if answer.get("t") != "saved":
            raise JobCanceled("the worker refused the checkpoint (claim lost or stopping)")

    def load(self, key: str) -> dict[str, Any] | None:
        import torch

        answer = self.parent.request({"t": "load", "key": key})
        if answer.get("t") != "loaded":
            return None
        path = self.parent.work / answer["file"]
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        finally:
            path.unlink(missing_ok=True)


def _memory_failure(exc: BaseException) -> bool:
    """An allocation refused by the address-space limit, however torch wrapped it."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def run_pipeline(job: dict[str, Any], parent: Parent) -> dict[str, Any]:
    """The job: :func:`cake_core.pipeline.run_job` on the files in the job folder."""
    from dataclasses import replace

    import torch

    from cake_core.device import default_runtime
    from cake_core.pipeline import run_job

    runtime = job["runtime"]
    chosen = replace(
        default_runtime(runtime["device"]),
        autocast=runtime["autocast"],
        channels_last=runtime["channels_last"],
        attention=runtime["attention"],
    )
    if runtime.get("threads"):  # after default_runtime, which would take every core
        torch.set_num_threads(int(runtime["threads"]))
    parent.send({"t": "ready", "device": str(chosen.device)})
    work = parent.work
    result = run_job(
        work / job["teacher"],
        tuple(job["input_shape"]),
        job["spec"],
        work / job["out"],
        eval_path=work / job["eval"] if job.get("eval") else None,
        runtime=chosen,
        on_progress=parent.on_progress,
        should_cancel=parent.should_cancel,
        checkpoints=PipeCheckpoints(parent),
    )
    return {
        "metrics": result.metrics,
        "student": asdict(result.spec.student),
        "artifacts": {name: os.path.relpath(path, work) for name, path in result.artifacts.items()},
    }


def probe_sandbox(job: dict[str, Any], parent: Parent) -> dict[str, Any]:
    """What code in the engine child can reach: a TCP listener, a file outside the job folder
    (read and write), the worker's environment (its own and through ``/proc``), a signal to the
    worker. For the tests and for an operator who wants to see a deployment's sandbox."""
    parent.send({"t": "ready", "device": "cpu"})
    probe = job.get("probe", {})
    seen: dict[str, Any] = {"env": dict(os.environ), "cwd": os.getcwd()}

    def attempt(name: str, action: Callable[[], Any]) -> None:
        try:
            seen[name] = action()
        except OSError as exc:
            seen[name] = errno.errorcode.get(exc.errno or 0, type(exc).__name__)

    def connect() -> str:
        with socket.create_connection((probe["host"], int(probe["port"])), timeout=2):
            return "connected"

    if "port" in probe:
        attempt("connect", connect)
    if "read" in probe:
        attempt("read", lambda: Path(probe["read"]).read_text())
    if "write" in probe:
        attempt("write", lambda: Path(probe["write"]).write_text("written by the engine child"))
    if "environ_of" in probe:
        attempt("environ_of", lambda: Path(f"/proc/{probe['environ_of']}/environ").read_bytes())
    if "signal" in probe:
        attempt("signal", lambda: os.kill(int(probe["signal"]), 0) or "sent")
    attempt("write_inside", lambda: (parent.work / "inside.txt").write_text("ok") and "written")
    if probe.get("allocate"):
        blocks = []
        while True:  # until the address-space limit refuses
            blocks.append(bytearray(256 << 20))
    if probe.get("spin"):
        while True:  # until the worker's stall watch or the CPU limit ends it
            pass
    return seen


TARGETS: dict[str, Callable[[dict[str, Any], Parent], dict[str, Any]]] = {
    "pipeline": run_pipeline,
    "probe": probe_sandbox,
}


def _error_message(exc: BaseException) -> dict[str, Any]:
    from cake_core.errors import CakeError

    if _memory_failure(exc):
        return {"t": "memory"}
    if isinstance(exc, CakeError):
        return {
            "t": "error",
            "class": type(exc).__name__,
            "code": exc.code,
            "message": exc.message,
            "field": getattr(exc, "field", None),
            "reason": getattr(exc, "reason", None),
        }
    traceback.print_exc()  # into the job folder's engine.log, which the worker logs
    return {"t": "internal", "type": type(exc).__name__}


def _die_with_the_worker() -> None:
    """SIGKILL this process when the worker thread that started it ends (``kill -9`` of the
    worker included): an orphaned engine would compute on, holding the job folder and cores."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def main(argv: list[str]) -> int:
    """Receive the job, lock the process down, run the target, send its result."""
    _die_with_the_worker()
    conn = Connection(int(argv[1]))
    job = json.loads(conn.recv_bytes(MAX_MESSAGE_BYTES))
    work = Path(job["work"])
    network = isolate_network()  # before any thread exists
    # /proc/self resolves here, to this process: its own entries, no other process's.
    read = [*job["read"], "/proc/self", "/proc/thread-self"]
    filesystem = restrict_filesystem(read, [str(work), *job["devices"]])
    limits = job["limits"]
    set_limits(
        limits["memory_bytes"],
        limits["cpu_seconds"],
        file_bytes=limits["file_bytes"],
        open_files=limits["open_files"],
    )
    os.chdir(work)
    parent = Parent(conn, work)
    parent.send({"t": "hello", "network": network, "filesystem": filesystem})
    answer: dict[str, Any]
    try:
        answer = {"t": "result", **TARGETS[job["target"]](job, parent)}
    except BaseException as exc:
        answer = _error_message(exc)
    # Sent outside the handler: the traceback's frames (and the memory they hold) are freed.
    try:
        parent.send(answer)
    except MemoryError:
        parent.send({"t": "memory"})
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
