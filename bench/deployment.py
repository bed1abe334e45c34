"""The deployment table of the zoo's students: size and CPU latency, fp32 and int8, ONNX Runtime
and TorchScript side by side.

Each pair of :mod:`bench.zoo` (teacher -> student) is distilled by a whole job
(:func:`cake_core.pipeline.run_job`, as the CLI and the service run it), and the job's own
deployment section of ``manifest.json`` (:mod:`cake_core.deploy`) is what this prints: per form
of the model (the teacher as uploaded, ``student.pt``, ``student.onnx``, ``student.int8.onnx``
when it was kept) its size on disk, parameters, median CPU latency at batch 1 and 64 and
agreement with the teacher on the held-out synthetic set; beside it the student's real accuracy
(the zoo's held-out split) and what became of int8 and why. Every number is measured in the job
that made the files; nothing is copied.

    python -m bench.deployment                          # every zoo pair, fast, seed 0
    python -m bench.deployment --teachers digits_cnn wine_mlp
    python -m bench.deployment --synthesis-cache ~/.cache/cake-synthesis   # reruns skip synthesis
    python -m bench.deployment --quick                  # digits_cnn and wine_mlp, first student

Latency is only worth reading from a quiet machine: the footer says whether this one was.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import (
    BusyMeter,
    add_common_args,
    command_line,
    console,
    describe_busy,
    machine_info,
    new_table,
    setup_runtime,
    write_results,
)
from bench.fidelity import synthesis_cache_key
from bench.quality import SynthesisReuse, SynthesisSets
from bench.zoo import FASHION_MNIST_HINT, ZOO, fashion_mnist_available, get_teacher, is_cached
from cake_core.device import Runtime
from cake_core.pipeline import run_job

QUICK_TEACHERS = ("digits_cnn", "wine_mlp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--teachers", nargs="+", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--students", choices=("all", "first"), default="all", help="every student of a teacher"
    )
    parser.add_argument(
        "--synthesis-cache",
        type=Path,
        default=None,
        help="keep synthetic sets here and reuse them (synthesis is most of a job's time)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.teachers, args.students = list(QUICK_TEACHERS), "first"
    return args


def run_pair(
    teacher_name: str,
    student_label: str,
    student_spec: dict[str, Any],
    args: argparse.Namespace,
    runtime: Runtime,
    shared: SynthesisSets,
    workdir: Path,
) -> dict[str, Any]:
    """One job; the record holds its deployment section, its accuracy and where time went."""
    teacher = get_teacher(teacher_name, seed=0)
    spec = {"preset": args.preset, "seed": args.seed, "student": dict(student_spec)}
    store = SynthesisReuse(shared, synthesis_cache_key(teacher, spec))
    out_dir = Path(tempfile.mkdtemp(prefix=f"{teacher_name}-", dir=workdir))
    started = time.perf_counter()
    result = run_job(
        teacher.path,
        teacher.input_shape,
        spec,
        out_dir,
        eval_path=teacher.eval_path,
        runtime=runtime,
        checkpoints=store,
    )
    manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    metrics = result.metrics
    return {
        "pair": f"{teacher_name} -> {student_label}",
        "teacher": teacher_name,
        "student": student_spec,
        "input_shape": list(teacher.input_shape),
        "preset": args.preset,
        "seed": args.seed,
        "synthesis_reused": store.hits > 0,
        "wall_seconds": time.perf_counter() - started,
        "teacher_accuracy": metrics.get("teacher_accuracy"),
        "student_accuracy": metrics.get("student_accuracy"),
        "accuracy_ratio": metrics.get("accuracy_ratio"),
        "artifacts": sorted(result.artifacts),
        "deployment": manifest["deployment"],
    }


def _size(num_bytes: float) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{num_bytes:.0f} B"


def _num(value: float | None, digits: int = 3) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def print_table(records: list[dict[str, Any]]) -> None:
    table = new_table(
        "Deployment: CPU latency (median ms) and size per form of the model",
        [
            "pair",
            "artifact",
            "runtime",
            ("size", "right"),
            ("params", "right"),
            ("batch 1 ms", "right"),
            ("batch 64 ms", "right"),
            ("agree. teacher", "right"),
        ],
    )
    for record in records:
        if "error" in record:
            table.add_row(record["pair"], "[red]failed[/]", record["error"][:60], *[""] * 5)
            continue
        for i, row in enumerate(record["deployment"]["table"]):
            table.add_row(
                record["pair"] if i == 0 else "",
                row["artifact"],
                row["runtime"],
                _size(row["size_bytes"]),
                f"{row['parameters']:,}",
                f"{row['latency_ms_batch_1']:.3f}",
                f"{row['latency_ms_batch_64']:.2f}",
                _num(row["agreement_teacher"]),
            )
        table.add_section()
    console.print(table)
    for record in records:
        if "error" in record:
            continue
        dep = record["deployment"]
        console.print(
            f"{record['pair']}: student/teacher on real data "
            f"{_num(record['accuracy_ratio'])}; ONNX {'kept' if dep['onnx']['kept'] else 'dropped'}"
            f" (max |logit diff| {_num(dep['onnx']['max_abs_logit_diff'], 6)}); int8 "
            f"{'kept' if dep['int8']['kept'] else 'refused'}: {dep['int8']['reason']}",
            highlight=False,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, runtime = setup_runtime(args.device, args.threads)
    info = machine_info(device)
    meter = BusyMeter()
    skipped = [
        t
        for t in args.teachers
        if "fmnist" in t and not fashion_mnist_available() and not is_cached(t)
    ]
    for name in skipped:
        console.print(f"[yellow]skipping {name}[/]: {FASHION_MNIST_HINT}", highlight=False)
    shared = SynthesisSets(args.synthesis_cache)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cake-deployment-") as tmp:
        for name in [t for t in args.teachers if t not in skipped]:
            students = list(ZOO[name].students.items())
            for label, spec in students[: None if args.students == "all" else 1]:
                try:
                    record = run_pair(name, label, spec, args, runtime, shared, Path(tmp))
                except Exception as exc:  # a failed pair is a result worth reporting
                    record = {"pair": f"{name} -> {label}", "error": f"{type(exc).__name__}: {exc}"}
                console.print(
                    f"{record['pair']}: "
                    + (
                        record.get("error")
                        or f"{record['wall_seconds']:.0f} s, {', '.join(record['artifacts'])}"
                    ),
                    highlight=False,
                )
                records.append(record)
    print_table(records)
    busy = meter.summary()
    console.print(describe_busy(busy, info["load_average_start"]))
    payload = {
        "benchmark": "deployment",
        "command": command_line(),
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {**info, **busy},
        "runtime": asdict(runtime),
        "skipped_teachers": skipped,
        "pairs": records,
    }
    console.print(f"wrote {write_results(args.out, 'deployment', device, payload)}")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
