"""What every benchmark shares: device choice, machine description, timing, tables, JSON output.

A number without the machine it came from cannot be compared with anything, so every result
file records the CPU, thread count, torch version, device name, date, the exact arguments and
how loaded the machine was while the benchmark ran (a shared 2-core box can halve a rate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from cake_core.device import Runtime, configure_cpu_threads, default_runtime, pick_device

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Wide enough for the tables when output goes to a file or a pipe (rich would assume 80).
console = Console(width=None if sys.stdout.isatty() else 150)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every benchmark takes, so they are spelled the same everywhere."""
    parser.add_argument(
        "--device",
        default="auto",
        help='"auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"',
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: every usable core, as a real job uses; on a "
        "machine shared with other work, 1 thread avoids OpenMP threads waiting on each other)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="folder for the JSON result (default: bench/results)",
    )


def setup_device(requested: str, threads: int | None = None) -> torch.device:
    """The device to run on; on the CPU also set the thread count.

    By default that is ``configure_cpu_threads`` (every usable core), what the engine's
    ``default_runtime`` does, so the benchmark sees the thread count a real job would.
    """
    try:
        device = pick_device(requested)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"--device {requested}: {exc}") from None
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    elif device.type == "cpu":
        configure_cpu_threads()
    return device


def setup_runtime(requested: str, threads: int | None = None) -> tuple[torch.device, Runtime]:
    """The device (:func:`setup_device`) and the engine's runtime for it, keeping the thread
    count ``--threads`` asked for: ``default_runtime`` resets it on the CPU."""
    device = setup_device(requested, threads)
    chosen = torch.get_num_threads()
    runtime = default_runtime(str(device))
    torch.set_num_threads(chosen)
    return device, runtime


def device_tag(device: torch.device) -> str:
    """``cpu`` or ``cuda``: the suffix of the result file (one file per kind of device)."""
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The CPU features that decide whether bf16 and wide vectors are fast here."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in present]
    except OSError:
        pass
    return []


def _git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}"


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """Everything needed to tell whether two result files are comparable."""
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count() or 1
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": _cpu_model(),
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": _git_revision(),
        "load_average_start": _load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["cuda_version"] = torch.version.cuda
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


@dataclass
class BusyMeter:
    """How much of the machine this process actually got while it ran.

    ``cpu_share`` is process CPU time over wall time times threads: near 1.0 the benchmark had
    its cores to itself; well below, other work competed for them and rates are pessimistic.
    """

    wall_start: float = field(default_factory=time.perf_counter)
    cpu_start: float = field(default_factory=time.process_time)
    start_load: float = field(default_factory=lambda: (_load_average() or [0.0])[0])

    def summary(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall_start
        cpu = time.process_time() - self.cpu_start
        threads = max(1, torch.get_num_threads())
        load = _load_average()
        others = max(load[0] if load else 0.0, self.start_load) - threads
        share = cpu / max(wall, 1e-9) / threads
        return {
            "elapsed_seconds": round(wall, 2),
            "process_cpu_seconds": round(cpu, 2),
            "cpu_share": round(share, 3),
            "load_average_end": load,
            # Busy: other processes kept a core's worth of load (the 1-minute load average
            # minus our own threads), or our threads got well under their share of the CPU.
            "busy": bool(others > 0.5 or share < 0.8),
        }


def describe_busy(summary: dict[str, Any], start_load: list[float] | None) -> str:
    """One line for the console saying whether the numbers were taken on a quiet machine."""
    end = summary.get("load_average_end")
    load = f"load average {start_load[0] if start_load else '?'} -> {end[0] if end else '?'}"
    verdict = "BUSY (rates are pessimistic)" if summary["busy"] else "quiet"
    return (
        f"elapsed {summary['elapsed_seconds']:.1f} s; {load}; "
        f"CPU share of this process {summary['cpu_share']:.2f}; machine {verdict}"
    )


def write_results(out_dir: Path, name: str, device: torch.device, payload: dict[str, Any]) -> Path:
    """Write ``<out_dir>/<name>-<device>.json`` (the latest run replaces the previous one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{device_tag(device)}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.device | torch.dtype):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def command_line() -> str:
    """How this benchmark was started, to paste back into a shell."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    module = spec.name if spec is not None else Path(sys.argv[0]).stem
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in sys.argv[1:])])


def time_repeats(
    fn: Callable[[], object],
    device: torch.device,
    *,
    min_seconds: float,
    max_repeats: int = 100,
) -> list[float]:
    """Seconds of each call of ``fn``, repeated until ``min_seconds`` have been spent.

    Every call does the same fixed work; repeating it (instead of growing it) keeps the work
    identical across the rows being compared while still timing fast rows long enough to be
    stable. At least one call always runs.
    """
    times: list[float] = []
    total = 0.0
    while not times or (total < min_seconds and len(times) < max_repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        total += elapsed
    return times


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value, NaN for none)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    if len(vals) == 1:
        return vals[0], 0.0
    return statistics.fmean(vals), statistics.stdev(vals)


def fmt_mean_std(values: Sequence[float], digits: int = 3) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_count(value: float) -> str:
    """Large rates in a readable form: 1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def new_table(title: str, columns: Sequence[str | tuple[str, str]]) -> Table:
    """A rich table; a column given as ``(name, "right")`` is right-aligned (numbers)."""
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        if isinstance(column, tuple):
            table.add_column(column[0], justify=column[1])  # type: ignore[arg-type]
        else:
            table.add_column(column)
    return table
