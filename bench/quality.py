"""Distillation quality: student accuracy on real held-out data, per preset and per option.

Speed means nothing if the student is poor, and results move by several points from one seed to
the next (docs/CAKE.md), so this benchmark runs whole jobs through
:func:`cake_core.pipeline.run_job`, exactly as the CLI and the service do, over several seeds,
and reports mean ± standard deviation. Teachers are real: trained on scikit-learn's data sets by
``examples.teachers``, with a held-out real split the student never sees.

Rows: each preset (``fast``, ``default``), then ablations of the options the engine adds beyond
the reference (``TrainingSpec.relabel``, ``mixup``, ``input_noise``, ``adversarial``), each
switched off on its own on top of ``fast``, so the effect of every option is visible.

    python -m bench.quality                   # fast (3 seeds) + default (1 seed) + ablations
    python -m bench.quality --presets fast    # skip the large default preset
    python -m bench.quality --quick           # digits only, fast only, one seed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    BusyMeter,
    add_common_args,
    command_line,
    console,
    describe_busy,
    fmt_mean_std,
    machine_info,
    mean_std,
    new_table,
    setup_runtime,
    write_results,
)
from cake_core.config import resolve_spec
from cake_core.device import Runtime
from cake_core.pipeline import DirectoryCheckpoints, run_job
from examples.teachers import TrainedTeacher, train_digits_cnn, train_tabular_mlp

DEFAULT_SEEDS = {"fast": 3, "default": 1}
FALLBACK_SEEDS = 1


@dataclass(frozen=True)
class TeacherCase:
    """A real teacher and the student the benchmark distills it into."""

    name: str
    train: Callable[[], TrainedTeacher]
    student: dict[str, Any]


TEACHERS: dict[str, TeacherCase] = {
    "digits": TeacherCase("digits", train_digits_cnn, {"arch": "lenet5", "width": 0.5}),
    "wine": TeacherCase("wine", lambda: train_tabular_mlp("wine"), {"arch": "mlp"}),
}


@dataclass(frozen=True)
class Variant:
    """One row: a preset, optionally with overrides on top (the ablations)."""

    label: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)

    def spec(self, seed: int, student: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = {"preset": self.preset, "seed": seed, "student": dict(student)}
        for section, values in self.overrides.items():
            spec[section] = dict(values)
        return spec


# Each ablation switches one option off on top of "fast". With relabel off the student trains on
# the stored soft labels (the reference); mixup, input noise and the adversarial step then have
# no effect, because the engine only changes samples it can relabel.
ABLATIONS = (
    Variant("fast, relabel off", "fast", {"training": {"relabel": False}}),
    Variant("fast, mixup 0", "fast", {"training": {"mixup": 0.0}}),
    Variant("fast, input_noise 0", "fast", {"training": {"input_noise": 0.0}}),
    Variant("fast, adversarial 0", "fast", {"training": {"adversarial": 0.0}}),
)


class SynthesisReuse:
    """A ``run_job`` checkpoint store that shares synthetic sets between runs, nothing else.

    The ablations change only the student's training, and synthesis with the same teacher,
    synthesis spec and seed is deterministic, so they can start from the synthetic set of the
    preset's run with the same seed instead of making it again (synthesis is most of a job's
    time). Training checkpoints are never kept: every run trains from scratch. The reported
    synthesis seconds are those of the run that made the set.
    """

    def __init__(self, shared: dict[tuple[str, str], dict[str, Any]], key: str) -> None:
        self.shared = shared
        self.key = key
        self.hits = 0

    def save(self, name: str, state: dict[str, Any]) -> None:
        if name.startswith("synthesis/"):
            self.shared[(self.key, name)] = state

    def load(self, name: str) -> dict[str, Any] | None:
        if not name.startswith("synthesis/"):
            return None
        state = self.shared.get((self.key, name))
        self.hits += state is not None
        return state


class SynthesisSets(dict[tuple[str, str], dict[str, Any]]):
    """Synthetic sets by (synthesis key, checkpoint name), for :class:`SynthesisReuse`.

    With a ``folder`` they are also written there and read back by later runs, so training-only
    probes on the zoo skip synthesis (most of a job's time) on every run but the first. The
    caller's key must name the teacher's weights, not only its name: a retrained teacher must
    not meet the sets of the old one.
    """

    def __init__(self, folder: Path | None = None) -> None:
        super().__init__()
        self.disk = DirectoryCheckpoints(folder) if folder is not None else None

    @staticmethod
    def _file_name(key: tuple[str, str]) -> str:
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]

    def __setitem__(self, key: tuple[str, str], state: dict[str, Any]) -> None:
        super().__setitem__(key, state)
        if self.disk is not None:
            self.disk.save(self._file_name(key), state)

    def get(self, key: tuple[str, str], default: Any = None) -> Any:
        if key not in self and self.disk is not None:
            loaded = self.disk.load(self._file_name(key))
            if loaded is not None:
                super().__setitem__(key, loaded)
        return super().get(key, default)


def synthesis_key(teacher: str, spec: dict[str, Any], num_classes: int) -> str:
    """What a synthetic set depends on: teacher, resolved synthesis spec, seed."""
    resolved = resolve_spec(spec, num_classes=num_classes)
    return json.dumps(
        {"teacher": teacher, "seed": resolved.seed, "synthesis": asdict(resolved.synthesis)},
        sort_keys=True,
    )


METRICS = (
    "teacher_accuracy",
    "student_accuracy",
    "accuracy_ratio",
    "agreement_eval",
    "agreement_synthetic",
    "synthesis_seconds",
    "training_seconds",
    "total_seconds",
    "num_samples",
)


def run_one(
    case: TeacherCase,
    trained: TrainedTeacher,
    variant: Variant,
    seed: int,
    paths: dict[str, Path],
    runtime: Runtime,
    shared: dict[tuple[str, str], dict[str, Any]] | None,
    workdir: Path,
) -> dict[str, Any]:
    """One job end to end; a job that fails becomes a record with the error, not a crash."""
    spec = variant.spec(seed, case.student)
    store = None
    if shared is not None:
        store = SynthesisReuse(shared, synthesis_key(case.name, spec, trained.num_classes))
    out_dir = workdir / f"{case.name}-{variant.label.replace(' ', '_').replace(',', '')}-{seed}"
    record: dict[str, Any] = {"teacher": case.name, "variant": variant.label, "seed": seed}
    started = time.perf_counter()
    try:
        result = run_job(
            paths["teacher"],
            trained.input_shape,
            spec,
            out_dir,
            eval_path=paths["eval"],
            runtime=runtime,
            checkpoints=store,
        )
    except Exception as exc:  # a diverged or invalid job is a result worth reporting
        record["error"] = f"{type(exc).__name__}: {exc}"[:400]
        record["wall_seconds"] = time.perf_counter() - started
        return record
    record.update({k: float(result.metrics.get(k, math.nan)) for k in METRICS})
    record["synthesis_reused"] = bool(store is not None and store.hits > 0)
    record["wall_seconds"] = time.perf_counter() - started
    record["spec"] = result.spec.to_dict()
    return record


def variants_for(args: argparse.Namespace) -> list[tuple[Variant, list[int]]]:
    """Rows in order with their seeds: presets first, then the ablations on ``fast``."""
    rows: list[tuple[Variant, list[int]]] = []
    for preset in args.presets:
        count = args.seeds or DEFAULT_SEEDS.get(preset, FALLBACK_SEEDS)
        rows.append((Variant(preset, preset), list(range(count))))
    if args.ablations and "fast" in args.presets:
        count = args.seeds or DEFAULT_SEEDS["fast"]
        rows.extend((ablation, list(range(count))) for ablation in ABLATIONS)
    return rows


def summarize(variant: Variant, records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if "error" not in r]
    row: dict[str, Any] = {
        "variant": variant.label,
        "preset": variant.preset,
        "overrides": variant.overrides,
        "seeds": [r["seed"] for r in records],
        "failed": [r["error"] for r in records if "error" in r],
    }
    for key in METRICS:
        mean, std = mean_std([r[key] for r in ok])
        row[key] = {"mean": mean, "std": std, "values": [r[key] for r in ok]}
    row["synthesis_reused"] = any(r.get("synthesis_reused") for r in ok)
    return row


def print_table(teachers: list[dict[str, Any]]) -> None:
    table = new_table(
        "Student accuracy on real held-out data (mean ± std over seeds)",
        [
            "teacher -> student",
            "row",
            ("seeds", "right"),
            ("teacher acc", "right"),
            ("student acc", "right"),
            ("student / teacher", "right"),
            ("agreement", "right"),
            ("synthesis s", "right"),
            ("training s", "right"),
        ],
    )
    notes: list[str] = []
    for i, entry in enumerate(teachers):
        if i:
            table.add_section()
        for j, row in enumerate(entry["rows"]):
            ok = len(row["student_accuracy"]["values"])
            seeds = f"{ok}" if not row["failed"] else f"{ok}/{len(row['seeds'])}"
            if row["failed"]:
                notes.extend(row["failed"])
                seeds += f" [yellow][{len(notes)}][/]"
            synth = fmt_mean_std(row["synthesis_seconds"]["values"], 1)
            if row["synthesis_reused"]:
                synth += "*"
            table.add_row(
                entry["label"] if j == 0 else "",
                row["variant"],
                seeds,
                fmt_mean_std(row["teacher_accuracy"]["values"][:1]),
                fmt_mean_std(row["student_accuracy"]["values"]),
                fmt_mean_std(row["accuracy_ratio"]["values"]),
                fmt_mean_std(row["agreement_eval"]["values"]),
                synth,
                fmt_mean_std(row["training_seconds"]["values"], 1),
            )
    console.print(table)
    console.print(
        "agreement: share of real test samples where student and teacher predict the same "
        "class. * synthetic set reused from the preset's run with the same seed (identical "
        "spec and seed: identical set); its synthesis time is that run's.",
        highlight=False,
    )
    for number, note in enumerate(notes, 1):
        console.print(f"  [{number}] {note}", highlight=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality", description=__doc__.splitlines()[0]
    )
    add_common_args(parser)
    parser.add_argument(
        "--presets", default="fast,default", help="comma list of presets (default fast,default)"
    )
    parser.add_argument(
        "--teachers", default="digits,wine", help="comma list of: digits, wine (default both)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per row (default: 3 for fast and its ablations, 1 for default)",
    )
    parser.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the relabel / mixup / input_noise / adversarial rows on top of fast "
        "(default: on, off with --quick)",
    )
    parser.add_argument(
        "--reuse-synthesis",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let ablation rows reuse the preset's synthetic set for the same seed (default on)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.teachers, args.seeds = "fast", "digits", 1
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    if args.ablations is None:
        args.ablations = not args.quick
    unknown = set(args.teachers) - set(TEACHERS)
    if unknown:
        parser.error(f"unknown teachers: {', '.join(sorted(unknown))}")
    for preset in args.presets:
        try:
            resolve_spec({"preset": preset})
        except Exception as exc:
            parser.error(str(exc))
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, runtime = setup_runtime(args.device, args.threads)
    threads = torch.get_num_threads()
    info = machine_info(device)
    meter = BusyMeter()
    rows_plan = variants_for(args)
    runs = sum(len(seeds) for _, seeds in rows_plan) * len(args.teachers)
    console.print(
        f"[bold]bench.quality[/] on {info['device_name']} ({device}), torch "
        f"{info['torch_version']}, {threads} threads: {len(args.teachers)} teacher(s), "
        f"{len(rows_plan)} row(s), {runs} job(s)"
    )
    shared: dict[tuple[str, str], dict[str, Any]] | None = {} if args.reuse_synthesis else None
    teachers: list[dict[str, Any]] = []
    all_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cake-quality-") as tmp:
        workdir = Path(tmp)
        for name in args.teachers:
            case = TEACHERS[name]
            trained_at = time.perf_counter()
            trained = case.train()
            paths = {
                "teacher": trained.save(workdir / f"{trained.name}.pt"),
                "eval": trained.save_eval(workdir / f"{trained.name}_test.npz"),
            }
            label = f"{trained.name} -> {case.student['arch']}"
            if "width" in case.student:
                label += f" x{case.student['width']:g}"
            console.print(
                f"[bold]{label}[/]: teacher test accuracy {trained.test_accuracy:.3f} on "
                f"{len(trained.y_test)} real samples (trained in "
                f"{time.perf_counter() - trained_at:.1f} s)",
                highlight=False,
            )
            rows = []
            for variant, seeds in rows_plan:
                records = []
                for seed in seeds:
                    record = run_one(case, trained, variant, seed, paths, runtime, shared, workdir)
                    records.append(record)
                    if "error" in record:
                        console.print(
                            f"  {variant.label:<22} seed {seed}: [red]failed[/] {record['error']}"
                        )
                    else:
                        console.print(
                            f"  {variant.label:<22} seed {seed}: student "
                            f"{record['student_accuracy']:.3f}, ratio "
                            f"{record['accuracy_ratio']:.3f} (synthesis "
                            f"{record['synthesis_seconds']:.1f} s"
                            f"{', reused' if record['synthesis_reused'] else ''}, training "
                            f"{record['training_seconds']:.1f} s)",
                            highlight=False,
                        )
                all_runs.extend(records)
                rows.append(summarize(variant, records))
            teachers.append(
                {
                    "name": case.name,
                    "label": label,
                    "teacher": trained.name,
                    "input_shape": list(trained.input_shape),
                    "num_classes": trained.num_classes,
                    "test_samples": len(trained.y_test),
                    "teacher_test_accuracy": trained.test_accuracy,
                    "student": case.student,
                    "rows": rows,
                }
            )
    print_table(teachers)
    busy = meter.summary()
    console.print(describe_busy(busy, info["load_average_start"]))
    payload = {
        "benchmark": "quality",
        "command": command_line(),
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {**info, **busy},
        "runtime": {
            "device": str(runtime.device),
            "autocast": runtime.autocast,
            "channels_last": runtime.channels_last,
        },
        "teachers": teachers,
        "runs": all_runs,
    }
    path = write_results(args.out, "quality", device, payload)
    console.print(f"wrote {path}")
    return 0 if all("error" not in r for r in all_runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
