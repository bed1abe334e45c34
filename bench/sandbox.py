"""What the worker's engine sandbox costs: the same job sandboxed and in-process, side by side.

``python -m bench.sandbox`` runs a ``fast`` job (default: ``examples/wine_mlp.pt``) through
:func:`worker.engine_sandbox.run_engine` twice over, alternating: once with the sandbox (a fresh
interpreter that imports torch, locks itself down and reports through a pipe; checkpoints move
through the worker as files) and once in this process (as with ``CAKE_WORKER_SANDBOX=false``).
Alternating keeps a shared machine's load from landing on one side only. Checkpoints go to a
folder (:class:`cake_core.pipeline.DirectoryCheckpoints`) on both sides.

Columns: wall-clock seconds of the whole call; the pipeline's own ``total_seconds`` (measured
inside whichever process ran it); their difference (start-up, imports, the pipe); and the
start-up of a bare sandboxed child (the ``probe`` target: interpreter, lock-down, no torch).
Prints a table and writes ``bench/results/sandbox-<device>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO_ROOT,
    BusyMeter,
    add_common_args,
    command_line,
    console,
    describe_busy,
    machine_info,
    new_table,
    setup_device,
    write_results,
)
from cake_core.device import default_runtime
from cake_core.pipeline import DirectoryCheckpoints
from cake_shared.settings import Settings
from worker.engine_sandbox import EngineLimits, run_engine, run_sandboxed


def _one_job(
    sandboxed: bool, teacher: Path, shape: tuple[int, ...], spec: dict[str, Any], device: str
) -> dict[str, float]:
    settings = Settings(worker_sandbox=sandboxed)
    runtime = default_runtime(device)
    work = Path(tempfile.mkdtemp(prefix="cake-bench-sandbox-"))
    try:
        local = work / "teacher.pt"
        shutil.copyfile(teacher, local)
        started = time.perf_counter()
        result = run_engine(
            settings,
            work,
            local,
            shape,
            spec,
            eval_path=None,
            runtime=runtime,
            on_progress=lambda report: None,
            should_cancel=lambda: False,
            checkpoints=DirectoryCheckpoints(work / "saved"),
        )
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    inside = float(result.metrics["total_seconds"])
    return {
        "wall_s": wall,
        "pipeline_s": inside,
        "outside_s": wall - inside,
        "agreement": float(result.metrics["agreement_synthetic"]),
    }


def _bare_child_start(limits: EngineLimits) -> float:
    work = Path(tempfile.mkdtemp(prefix="cake-bench-sandbox-"))
    try:
        started = time.perf_counter()
        run_sandboxed(work, {"target": "probe"}, limits, should_cancel=lambda: False)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--teacher", type=Path, default=REPO_ROOT / "examples" / "wine_mlp.pt")
    parser.add_argument("--input-shape", default="13", help="comma-separated, e.g. 1,28,28")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--repeats", type=int, default=2, help="jobs per side")
    args = parser.parse_args(argv)
    device = setup_device(args.device, args.threads)
    shape = tuple(int(d) for d in args.input_shape.split(","))
    spec: dict[str, Any] = {"preset": args.preset}
    if args.quick:
        spec = {"synthesis": {"num_samples": 200, "steps": 5}, "training": {"epochs": 1}}
    info = machine_info(device)
    meter = BusyMeter()
    runs: dict[str, list[dict[str, float]]] = {"in-process": [], "sandboxed": []}
    for i in range(max(1, args.repeats)):
        for name in ("sandboxed", "in-process") if i % 2 == 0 else ("in-process", "sandboxed"):
            row = _one_job(name == "sandboxed", args.teacher, shape, spec, str(device))
            runs[name].append(row)
            console.print(f"{name} #{len(runs[name])}: {row['wall_s']:.2f} s")
    limits = EngineLimits.from_settings(Settings(), default_runtime(str(device)))
    starts = [_bare_child_start(limits) for _ in range(3)]

    table = new_table(
        f"engine sandbox: {'quick' if args.quick else args.preset} job on {args.teacher.name} "
        f"({device}, "
        f"{info['torch_threads']} threads), median of {args.repeats}",
        ["mode", ("wall s", "right"), ("pipeline s", "right"), ("outside s", "right"),
         ("agreement", "right")],
    )  # fmt: skip
    medians: dict[str, dict[str, float]] = {}
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        medians[name] = med
        table.add_row(name, f"{med['wall_s']:.2f}", f"{med['pipeline_s']:.2f}",
                      f"{med['outside_s']:.2f}", f"{med['agreement']:.3f}")  # fmt: skip
    overhead = medians["sandboxed"]["wall_s"] - medians["in-process"]["wall_s"]
    share = overhead / medians["in-process"]["wall_s"]
    console.print(table)
    console.print(
        f"overhead of the sandbox: {overhead:+.2f} s per job ({share:+.1%}); a bare sandboxed "
        f"child (no torch) starts in {statistics.median(starts):.2f} s"
    )
    summary = meter.summary()
    console.print(describe_busy(summary, info["load_average_start"]))
    path = write_results(
        args.out,
        "sandbox",
        device,
        {
            "command": command_line(),
            "machine": info,
            "load": summary,
            "spec": spec,
            "teacher": args.teacher.name,
            "runs": runs,
            "median": medians,
            "overhead_s": overhead,
            "overhead_share": share,
            "bare_child_start_s": starts,
        },
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
