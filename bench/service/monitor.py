"""Watching processes while the service benchmark runs: process trees, resident memory, CPU time
(psutil), and the kernel's peak-RSS counter.

CPU is reported per measurement as the machine's, ours (this process and everything it
started) and the rest: other people's work on the same cores, which a shared 2-core machine
has and which moves every latency measured on it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

MIB = 1 << 20


def process(pid: int) -> psutil.Process | None:
    """``pid`` as a psutil process (it remembers its start time, so a reused pid is never
    mistaken for it later), or None when it is gone."""
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid``, whatever session it started (``cake serve`` runs its worker
    in a session of its own); parents before their children."""
    proc = process(pid)
    if proc is None:
        return []
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def descendants_by_depth(pid: int) -> list[tuple[psutil.Process, int]]:
    """``(process, depth)`` of every process below ``pid`` (1: its children, 2: theirs...)."""
    depth = {pid: 0}
    out: list[tuple[psutil.Process, int]] = []
    for child in descendants(pid):  # parents come first, so theirs is known
        try:
            parent = child.ppid()
        except psutil.Error:
            continue
        depth[child.pid] = depth.get(parent, 0) + 1
        out.append((child, depth[child.pid]))
    return out


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU time of ``proc`` so far, with that of the children it has reaped
    (0 when it is gone)."""
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system + times.children_user + times.children_system


def rss_bytes(proc: psutil.Process | int) -> int:
    """Resident set size now (0 when the process is gone)."""
    try:
        target = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return int(target.memory_info().rss)
    except psutil.Error:
        return 0


def peak_rss_kib(pid: int) -> int | None:
    """The kernel's peak resident set size of ``pid`` (``VmHWM``), in KiB.

    Read from ``/proc/<pid>/status`` because psutil has no peak RSS of another process; with
    :func:`reset_peak_rss` it gives the exact peak of one upload, which sampling every 20 ms
    can miss."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak RSS (``VmHWM``) of ``pid`` (``clear_refs`` 5, Linux >= 4.0; no
    psutil call does this)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def system_busy_seconds() -> tuple[float, float]:
    """(CPU seconds spent busy by the whole machine, wall seconds)."""
    t = psutil.cpu_times()
    # idle and iowait are not busy; guest time is already counted in user time
    busy = t.user + t.nice + t.system + t.irq + t.softirq + t.steal
    return busy, time.monotonic()


@dataclass
class CpuWindow:
    """CPU use over one measurement: the machine's, ours (this process and everything it
    started), and the rest: other people's work on the same cores.

    ``groups`` names process trees to report separately (e.g. the API server's): each as
    ``<name>_cores`` (average over the window) and ``<name>_cpu_seconds``.
    """

    groups: dict[str, int] = field(default_factory=dict)
    _start: dict[int, float] = field(default_factory=dict)
    _group_start: dict[str, dict[int, float]] = field(default_factory=dict)
    _busy0: float = 0.0
    _t0: float = 0.0
    _proc0: float = 0.0

    @staticmethod
    def _tree(pid: int) -> dict[int, float]:
        root = process(pid)
        procs = ([root] if root is not None else []) + descendants(pid)
        return {p.pid: cpu_seconds(p) for p in procs}

    def __enter__(self) -> CpuWindow:
        self._busy0, self._t0 = system_busy_seconds()
        self._proc0 = time.process_time()
        self._start = self._tree(os.getpid())
        self._group_start = {name: self._tree(pid) for name, pid in self.groups.items()}
        self.result: dict[str, Any] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, t1 = system_busy_seconds()
        wall = max(t1 - self._t0, 1e-9)

        def delta(start: dict[int, float], end: dict[int, float]) -> float:
            return sum(max(0.0, v - start.get(p, 0.0)) for p, v in end.items())

        ours = delta(self._start, self._tree(os.getpid()))
        machine = busy1 - self._busy0
        self.result = {
            "wall_seconds": round(wall, 2),
            "machine_cores": round(machine / wall, 2),
            "ours_cores": round(ours / wall, 2),
            "others_cores": round(max(0.0, machine - ours) / wall, 2),
            # this process alone (the load generator, or the upload client)
            "load_generator_cores": round((time.process_time() - self._proc0) / wall, 2),
        }
        for name, pid in self.groups.items():
            seconds = delta(self._group_start[name], self._tree(pid))
            self.result[f"{name}_cores"] = round(seconds / wall, 2)
            # unrounded, for costs per request (0.01 cores of rounding is 0.3 s over 30 s)
            self.result[f"{name}_cpu_seconds"] = round(seconds, 4)


class RssSampler(threading.Thread):
    """Samples the resident memory of a process and of its descendants every ``period_s``."""

    def __init__(self, pid: int, period_s: float = 0.02) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.period_s = period_s
        self.stop_event = threading.Event()
        self.samples = 0
        self.peak_api = 0
        self.peak_children_sum = 0
        self.peak_by_depth: dict[int, int] = {}  # 1: the fork server, 2: the check processes
        self.trace: list[tuple[float, int, int]] = []
        self._kids: list[tuple[psutil.Process, int]] = []
        self._kids_at = 0.0

    def run(self) -> None:
        t0 = time.perf_counter()
        api_proc = process(self.pid)
        while not self.stop_event.is_set():
            now = time.perf_counter()
            if now - self._kids_at > 0.1:  # the tree changes rarely; reading it costs more
                self._kids = descendants_by_depth(self.pid)
                self._kids_at = now
            api = rss_bytes(api_proc) if api_proc is not None else 0
            kids = 0
            for kid, depth in self._kids:
                value = rss_bytes(kid)
                kids += value
                self.peak_by_depth[depth] = max(self.peak_by_depth.get(depth, 0), value)
            self.peak_api = max(self.peak_api, api)
            self.peak_children_sum = max(self.peak_children_sum, kids)
            self.samples += 1
            if not self.trace or now - self.trace[-1][0] - t0 >= 0.25:
                self.trace.append((round(now - t0, 3), api // MIB, kids // MIB))
            self.stop_event.wait(self.period_s)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)
