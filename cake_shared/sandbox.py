"""Process isolation primitives shared by the API's check sandbox and the worker's engine child.

Web-free and torch-free on purpose: :mod:`api.sandbox` (the upload check) and
:mod:`worker.engine_child` (the job's engine) both call these in a freshly started child, before
it runs anything untrusted, and neither may import the other.

* :func:`isolate_network`: a new, empty network namespace (no interface but a down loopback).
* :func:`set_limits`: rlimits on memory (address space), CPU time, file size, open files and
  core dumps.
* :func:`restrict_filesystem`: a Landlock domain (Linux 5.13+) in which the process may read
  only the folders it names and write only beneath the ones it names; the ptrace check that
  comes with it also hides other processes' ``/proc/<pid>/environ`` and memory.

Each returns whether it took effect: where the kernel refuses (an unprivileged container, an
old kernel) the caller still runs its target and records that the isolation was not possible.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
from collections.abc import Iterable

__all__ = ["MAX_FILE_BYTES", "isolate_network", "landlock_abi", "restrict_filesystem", "set_limits"]

MAX_FILE_BYTES = 64 << 20
"""The API's default cap on any file a child writes (torch probes the temp folder)."""

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - not Linux
        return None


def isolate_network() -> bool:
    """Move this (single-threaded, freshly started) process into a new network namespace.

    Tried as is first (root or CAP_SYS_ADMIN), then together with a new user namespace (allowed
    to unprivileged users on most distributions). Python 3.11 has no ``os.unshare``, hence libc.
    Must run before the process starts threads: ``unshare`` of a user namespace refuses a
    multi-threaded caller.
    """
    libc = _libc()
    unshare = getattr(libc, "unshare", None)
    if unshare is None:  # pragma: no cover - not Linux
        return False
    for flags in (_CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET):
        if unshare(ctypes.c_int(flags)) == 0:
            return True
    return False


def set_limits(
    memory_bytes: int | None,
    cpu_seconds: int | None,
    *,
    file_bytes: int = MAX_FILE_BYTES,
    open_files: int | None = None,
) -> None:
    """Resource limits of this process; each is best effort (a platform may lack one).

    No core dumps; no file written past ``file_bytes`` (SIGXFSZ, or EFBIG where ignored);
    ``memory_bytes`` caps the address space (an allocation past it fails with an error, not
    the kernel's OOM killer picking a process); ``cpu_seconds`` sends SIGXCPU at the limit and
    SIGKILL one second later; ``open_files`` caps the descriptors.
    """
    limits: list[tuple[int, int, int]] = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_FSIZE, file_bytes, file_bytes),
    ]
    if memory_bytes:
        limits.append((resource.RLIMIT_AS, memory_bytes, memory_bytes))
    if cpu_seconds:
        limits.append((resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1))
    if open_files:
        limits.append((resource.RLIMIT_NOFILE, open_files, open_files))
    for which, soft, hard in limits:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (soft, hard))


# -- Landlock (include/uapi/linux/landlock.h) ------------------------------------------------
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_V1_ALL = (1 << 13) - 1  # execute ... make_sym
_REFER, _TRUNCATE = 1 << 13, 1 << 14
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (old kernel, disabled LSM)."""
    libc = _libc()
    if libc is None:  # pragma: no cover
        return 0
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(0, int(version))


def restrict_filesystem(read: Iterable[str], write: Iterable[str]) -> bool:
    """Allow this process (and what it starts) to read only beneath ``read`` and ``write``,
    and to create, change or delete files only beneath ``write``; everything else is refused
    with EACCES. Paths that do not exist are skipped. Irreversible.

    Where the ABI allows (6+) it also scopes signals and abstract unix sockets to the domain:
    the process can no longer signal its parent or reach a socket outside. Rights the kernel
    does not know are left out, so an older kernel gives a looser but working domain.
    """
    abi = landlock_abi()
    libc = _libc()
    if abi < 1 or libc is None:
        return False
    handled = _V1_ALL | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(
        handled, 0, (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        return False
    try:
        reading = _EXECUTE | _READ_FILE | _READ_DIR
        for paths, rights in ((read, reading), (write, handled)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    allowed = rights if os.path.isdir(path) else rights & _FILE_ONLY
                    rule = _PathBeneathAttr(allowed, fd)
                    if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH,
                                    ctypes.byref(rule), 0) != 0:  # fmt: skip
                        return False
                finally:
                    os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) == 0
    finally:
        os.close(ruleset)
