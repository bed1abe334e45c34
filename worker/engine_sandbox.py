"""Running the engine for a job: in a sandboxed child process (the default), or in-process.

The job's teacher is code somebody uploaded. The API checked it (no pickles, no file operators,
a probe batch under limits), but a forward pass can still behave at run time as it did not on the
probe: allocate without end, never return. So the worker runs the whole pipeline (loading the
teacher, synthesis, training, evaluation, export) in :mod:`worker.engine_child`, a fresh
interpreter with no network, no secrets in its environment, rlimits, and a file system it may
write only inside the job's folder; see that module for how it locks itself down.

The worker process stays the one that talks to the service: :func:`run_engine` answers the
child's messages with the job's :class:`~worker.tracker.JobTracker` callbacks (progress, the stop
flag) and its checkpoint store (uploads guarded by the claim), and watches the child:

* a stop (cancel, worker shutdown, claim lost) is sent at once and honoured at the child's next
  step; a child that does not end within ``STOP_GRACE_S`` after it is killed;
* no sign of life for ``stall_timeout_s`` (a forward pass that never returns), more than
  ``timeout_s`` in all, or a memory, CPU-time or file-size limit: the child is killed and the job
  fails with a :class:`~cake_core.errors.TeacherInvalidError` that names the limit and its setting;
* the child dying otherwise (a crash in torch): an internal error, retried like any other.

``CAKE_WORKER_SANDBOX=false`` runs the pipeline in the worker process instead (as before the
sandbox; for debugging, and for platforms without the kernel features).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

import cake_core
import cake_shared
import worker
from cake_core import errors
from cake_core.device import Runtime
from cake_core.errors import CakeError, JobCanceled, SpecError, TeacherInvalidError
from cake_core.pipeline import CheckpointStore, Progress, ProgressCallback, run_job
from cake_core.spec import StudentSpec
from cake_shared.settings import Settings
from worker.engine_child import MAX_MESSAGE_BYTES

log = logging.getLogger("cake.worker")

#: After a stop is sent, how long the child has to end at its next step before it is killed.
STOP_GRACE_S = 30.0
#: No file the engine writes may grow past this (the student, a checkpoint, a report).
ENGINE_FILE_BYTES = 16 << 30
#: Open files the engine may hold (torch opens its libraries, a data loader some files).
ENGINE_OPEN_FILES = 4096
#: Files outside the interpreter the engine's libraries read (the loader, time zone, fonts).
_SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/fonts",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    # Not /proc as a whole: the worker's /proc/<pid>/environ holds its secrets (the child
    # adds its own /proc/self).
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/sys/kernel",
    "/proc/sys/vm/overcommit_memory",
    "/proc/driver/nvidia",
    "/sys/fs/cgroup",
    "/sys/bus/pci",
    "/sys/devices",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
)


@dataclass
class ResultSpec:
    """The part of the resolved spec the worker records: the student it built."""

    student: StudentSpec


@dataclass
class EngineResult:
    """What the worker needs of a finished pipeline, whichever process ran it (the fields of
    :class:`~cake_core.pipeline.JobResult` it reads, under the same names)."""

    metrics: dict[str, Any]
    spec: ResultSpec
    artifacts: dict[str, Path]


@dataclass
class EngineLimits:
    """The sandbox's limits for one job, from the worker's settings."""

    timeout_s: float
    stall_timeout_s: float
    memory_bytes: int | None
    cpu_seconds: int | None
    file_bytes: int = ENGINE_FILE_BYTES
    open_files: int = ENGINE_OPEN_FILES

    @classmethod
    def from_settings(cls, settings: Settings, runtime: Runtime) -> EngineLimits:
        """CPU time: the wall-clock timeout on every thread torch may use, so that only a
        runaway child meets it; memory: none on CUDA (the driver maps far more address space
        than it uses, and ``RLIMIT_AS`` would refuse it)."""
        memory = settings.job_memory_mb * (1 << 20) if settings.job_memory_mb else _physical()
        threads = max(1, torch.get_num_threads())
        return cls(
            timeout_s=settings.job_timeout_s,
            stall_timeout_s=settings.job_stall_timeout_s,
            memory_bytes=None if runtime.is_cuda else memory,
            cpu_seconds=int(settings.job_timeout_s * threads) + 60,
        )


def _physical() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover
        return None


def _read_paths() -> list[str]:
    """What the child may read: the interpreter and its libraries, the three packages it
    imports from this checkout (not the checkout itself, which may hold a data folder), and
    :data:`_SYSTEM_READ`."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    paths.update(p for p in sysconfig.get_paths().values() if p)
    paths.update(p for p in sys.path if p and "site-packages" in p)
    paths.update({os.path.realpath(p) for p in paths})
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    packages = {str(Path(m.__file__).resolve().parent) for m in (cake_core, cake_shared, worker)}
    return sorted(p for p in paths | packages | set(_SYSTEM_READ) if os.path.exists(p))


def _devices() -> list[str]:
    """Device files the child may write: /dev/null and the GPU's."""
    return ["/dev/null", *glob.glob("/dev/nvidia*"), *glob.glob("/dev/dri/*")]


def _child_environment(work: Path) -> dict[str, str]:
    """No secret, nothing of the worker's ``CAKE_*``: where to find Python code, where to put
    temporary files, and the thread and GPU choices the worker was given."""
    env = {
        "PATH": os.defpath,
        "HOME": str(work),
        "TMPDIR": str(work / "tmp"),
        "MPLCONFIGDIR": str(work / "tmp"),
        "PYTHONPATH": str(work / "code"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "LANG": "C.UTF-8",
    }
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _link_code(work: Path) -> None:
    """The child's import path: links to the three packages in the job folder, so that it
    imports them without being allowed to list or read the rest of the checkout."""
    code = work / "code"
    code.mkdir(exist_ok=True)
    for module in (cake_core, cake_shared, worker):
        package = Path(module.__file__).resolve().parent
        link = code / package.name
        if not link.exists():
            link.symlink_to(package, target_is_directory=True)


def child_file(work: Path, name: Any) -> Path:
    """A file the child says it wrote, checked before the worker reads or uploads it: a
    relative path inside the job folder, a regular file (no link out of it, no hard link to a
    file elsewhere). Anything else is the child misbehaving: refused."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        raise RuntimeError(f"engine child named an invalid file {name!r}")
    root = os.path.realpath(work)
    path = os.path.realpath(os.path.join(root, name))
    if not path.startswith(root + os.sep):
        raise RuntimeError("engine child named a file outside the job folder")
    info = os.lstat(path)
    if not os.path.isfile(path) or os.path.islink(path) or info.st_nlink != 1:
        raise RuntimeError("engine child named something other than a plain file")
    return Path(path)


def _rebuild_error(message: dict[str, Any]) -> CakeError:
    """The :class:`CakeError` the child raised, from its name, code and message."""
    text = str(message.get("message") or "the job failed")
    name = message.get("class")
    if name == "SpecError" and message.get("field"):
        return SpecError(str(message["field"]), str(message.get("reason") or text))
    cls = getattr(errors, str(name), None)
    if isinstance(cls, type) and issubclass(cls, CakeError) and cls is not SpecError:
        return cls(text)
    error = CakeError(text)
    error.code = str(message.get("code") or "internal")
    return error


def _limit_error(what: str, setting: str) -> TeacherInvalidError:
    return TeacherInvalidError(
        f"the job {what} and was stopped; a teacher whose forward pass does this at run time "
        f"cannot be distilled here (the worker's limit is {setting})"
    )


class _Child:
    """The running child and the parent's end of its pipe."""

    def __init__(self, work: Path) -> None:
        self.work = work
        parent_sock, child_sock = socket.socketpair()
        self.conn = Connection(os.dup(parent_sock.fileno()))
        parent_sock.close()
        self.log_path = work / "engine.log"
        (work / "tmp").mkdir(exist_ok=True)
        _link_code(work)
        try:
            with open(self.log_path, "wb") as log_file:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "worker.engine_child", str(child_sock.fileno())],
                    pass_fds=(child_sock.fileno(),),
                    env=_child_environment(work),
                    cwd=work,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    # Its own session: a Ctrl-C or a signal to the worker's process group does
                    # not reach it; the worker stops it through the pipe.
                    start_new_session=True,
                )
        finally:
            child_sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self.conn.send_bytes(json.dumps(message).encode())

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, None if none came within ``timeout``; EOFError when the child
        closed its end (exited or died)."""
        if not self.conn.poll(timeout):
            return None
        message = json.loads(self.conn.recv_bytes(MAX_MESSAGE_BYTES))
        if not isinstance(message, dict):
            raise RuntimeError("engine child sent something other than a message")
        return message

    def log_tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-4000:].decode(errors="replace")
        except OSError:
            return ""

    def died(self) -> BaseException:
        """Why the child ended without answering, as the exception the job ends with."""
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        if code == -signal.SIGXCPU:
            return _limit_error("used up its CPU time", "CAKE_JOB_TIMEOUT_S x threads")
        if code == -signal.SIGXFSZ:
            return _limit_error(
                f"wrote a file larger than {ENGINE_FILE_BYTES >> 30} GiB", "per file"
            )
        log.error("engine child ended with exit code %s; its log:\n%s", code, self.log_tail())
        return RuntimeError(f"the engine child process ended unexpectedly (exit code {code})")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        self.conn.close()


def run_sandboxed(
    work: Path,
    job: dict[str, Any],
    limits: EngineLimits,
    *,
    should_cancel: Callable[[], bool],
    on_progress: ProgressCallback | None = None,
    checkpoints: CheckpointStore | None = None,
    on_isolation: Callable[[bool, bool], None] | None = None,
) -> dict[str, Any]:
    """Run ``job["target"]`` of :mod:`worker.engine_child` on ``work``; the child's result.

    ``job`` holds the target's own fields (files relative to ``work``, spec, runtime...); this
    adds the folder, what the child may read, the device files and the limits. Raises what the
    job should end with (see the module's docstring).
    """
    job = {
        **job,
        "work": str(work),
        "read": _read_paths(),
        "devices": _devices(),
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": limits.cpu_seconds,
            "file_bytes": limits.file_bytes,
            "open_files": limits.open_files,
        },
    }
    child = _Child(work)
    started = time.monotonic()
    alive_at = started
    ready = False
    stop_sent: float | None = None
    loaded = 0
    try:
        try:
            child.send(job)
        except OSError:  # it died before it read its job
            raise child.died() from None
        while True:
            now = time.monotonic()
            if stop_sent is None and should_cancel():
                child.send({"t": "stop"})
                stop_sent = now
            if stop_sent is not None and now - stop_sent > STOP_GRACE_S:
                log.warning("engine child did not stop within %g s; killed", STOP_GRACE_S)
                raise JobCanceled("stopped (the engine was killed)")
            if now - started > limits.timeout_s:
                raise _limit_error(
                    f"ran for more than {limits.timeout_s:g} s", "CAKE_JOB_TIMEOUT_S"
                )
            if ready and now - alive_at > limits.stall_timeout_s:
                raise _limit_error(
                    f"made no step for {limits.stall_timeout_s:g} s (a forward pass that "
                    "never returns?)",
                    "CAKE_JOB_STALL_TIMEOUT_S",
                )
            try:
                message = child.receive(0.1)
            except (EOFError, OSError):
                raise child.died() from None
            if message is None:
                if child.proc.poll() is not None and not child.conn.poll(0):
                    raise child.died()
                continue
            alive_at = time.monotonic()
            kind = message.get("t")
            if kind == "hello":
                network, filesystem = bool(message["network"]), bool(message["filesystem"])
                if on_isolation is not None:
                    on_isolation(network, filesystem)
            elif kind == "ready":
                ready = True
            elif kind == "tick":
                pass
            elif kind == "progress":
                if on_progress is not None:
                    on_progress(Progress(**message["report"]))
            elif kind == "save":
                child.send({"t": _save(work, message, checkpoints)})
            elif kind == "load":
                loaded += 1
                child.send(_load(work, message, checkpoints, loaded))
            elif kind == "result":
                return message
            elif kind == "error":
                raise _rebuild_error(message)
            elif kind == "memory":
                mib = (limits.memory_bytes or 0) >> 20
                raise _limit_error(f"needed more than {mib} MiB of memory", "CAKE_JOB_MEMORY_MB")
            elif kind == "internal":
                log.error("engine child failed (%s); its log:\n%s", message.get("type"),
                          child.log_tail())  # fmt: skip
                raise RuntimeError(f"the engine failed with {message.get('type')}")
            else:
                raise RuntimeError(f"engine child sent an unknown message {kind!r}")
            # The stall watch counts the child's time, not the worker's: a checkpoint upload
            # that rode out a store outage is not the child making no step.
            alive_at = time.monotonic()
    finally:
        child.close()


def _save(work: Path, message: dict[str, Any], checkpoints: CheckpointStore | None) -> str:
    """Store the checkpoint file the child wrote; ``saved`` or ``refused`` (claim lost)."""
    path = child_file(work, message.get("file"))
    if checkpoints is None:
        return "saved"
    # Read back as tensors and plain containers only (the child's file is not trusted code).
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        checkpoints.save(str(message["key"]), state)
    except JobCanceled:
        return "refused"
    return "saved"


def _load(
    work: Path, message: dict[str, Any], checkpoints: CheckpointStore | None, n: int
) -> dict[str, Any]:
    """Hand the child a checkpoint as a file in its folder (``missing`` when there is none)."""
    state = checkpoints.load(str(message["key"])) if checkpoints is not None else None
    if state is None:
        return {"t": "missing"}
    folder = work / "checkpoints"
    folder.mkdir(exist_ok=True)
    path = folder / f"load-{n}.pt"
    torch.save(state, path)
    return {"t": "loaded", "file": os.path.relpath(path, work)}


def run_engine(
    settings: Settings,
    work: Path,
    teacher_path: Path,
    input_shape: tuple[int, ...],
    spec: dict[str, Any],
    *,
    eval_path: Path | None,
    runtime: Runtime,
    on_progress: ProgressCallback,
    should_cancel: Callable[[], bool],
    checkpoints: CheckpointStore,
    on_isolation: Callable[[bool, bool], None] | None = None,
) -> EngineResult:
    """The job's pipeline on the files in ``work`` (artifacts in ``work/out``), sandboxed when
    ``settings.worker_sandbox`` (the default), in this process otherwise."""
    out = work / "out"
    if not settings.worker_sandbox:
        result = run_job(
            teacher_path,
            input_shape,
            spec,
            out,
            eval_path=eval_path,
            runtime=runtime,
            on_progress=on_progress,
            should_cancel=should_cancel,
            checkpoints=checkpoints,
        )
        return EngineResult(result.metrics, ResultSpec(result.spec.student), result.artifacts)
    job = {
        "target": "pipeline",
        "teacher": os.path.relpath(teacher_path, work),
        "eval": os.path.relpath(eval_path, work) if eval_path is not None else None,
        "out": "out",
        "input_shape": list(input_shape),
        "spec": spec,
        "runtime": {
            "device": str(runtime.device),
            "autocast": runtime.autocast,
            "channels_last": runtime.channels_last,
            "attention": runtime.attention,
            "threads": torch.get_num_threads(),
        },
    }
    answer = run_sandboxed(
        work,
        job,
        EngineLimits.from_settings(settings, runtime),
        should_cancel=should_cancel,
        on_progress=on_progress,
        checkpoints=checkpoints,
        on_isolation=on_isolation,
    )
    artifacts = {str(name): child_file(work, rel) for name, rel in answer["artifacts"].items()}
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    student = StudentSpec(**answer["student"])
    return EngineResult(dict(answer["metrics"]), ResultSpec(student), artifacts)
