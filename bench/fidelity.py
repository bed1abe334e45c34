"""The fidelity zoo: how closely students follow real teachers of many families, with bounds.

Each teacher of :mod:`bench.zoo` (CNNs with and without BatchNorm, a ViT, MLPs with and without
LayerNorm; images and tables) is distilled by whole jobs (:func:`cake_core.pipeline.run_job`)
over several seeds and judged on its real held-out split. Two reference rows per pair train the
same way without synthesis: ceiling (the real training split) and floor (Gaussian noise), both
labelled by the teacher. The engine's data-free ``fidelity_estimate`` is set against the real
agreement: could a user trust it without real data?

    python -m bench.fidelity                          # every teacher, fast, 3 seeds
    python -m bench.fidelity --teachers wine_mlp --seeds 1
    python -m bench.fidelity --variants all           # plus the ablation rows on fast
    python -m bench.fidelity --quick                  # digits_cnn and wine_mlp, fast, 1 seed
    python -m bench.fidelity --merge a.json b.json    # one table and JSON from separate runs

Separate runs (one teacher each, started side by side: a GPU is mostly idle while one small
job launches its kernels) are merged with ``--merge``; their timings then include the sharing.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
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
from bench.quality import SynthesisReuse, SynthesisSets, synthesis_key
from bench.zoo import (
    FASHION_MNIST_HINT,
    ZOO,
    CachedTeacher,
    fashion_mnist_available,
    get_teacher,
    is_cached,
)
from cake_core.config import PRESETS, resolve_spec
from cake_core.device import Runtime
from cake_core.distill import SyntheticSet, train_student
from cake_core.evaluate import evaluate_on_data, load_eval_arrays
from cake_core.pipeline import run_job
from cake_core.students import build_student, choose_width, default_arch
from cake_core.teacher import inspect_teacher

DEFAULT_SEEDS = {"fast": 3}
FALLBACK_SEEDS = 1

# Ablations: label -> (preset, overrides merged into the job spec). Each changes one thing.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fast, bn prior 0": ("fast", {"synthesis": {"weights": {"bn": 0.0}}}),
    "fast, tv 1e3": ("fast", {"synthesis": {"weights": {"tv": 1e3}}}),
    "fast, decay 2": ("fast", {"synthesis": {"noise_decay_magnitude": 2.0}}),
    "fast, augment on": ("fast", {"synthesis": {"augment": True}}),
    "fast, adversarial 0": ("fast", {"training": {"adversarial": 0.0}}),
    "fast, adversarial 3 steps": ("fast", {"training": {"adversarial_steps": 3}}),
    "fast, relabel off": ("fast", {"training": {"relabel": False}}),
    "fast, input noise 0.3": ("fast", {"training": {"input_noise": 0.3}}),
    "fast, pixel": ("fast", {"synthesis": {"parameterization": "pixel"}}),
    "fast, pink prior": ("fast", {"synthesis": {"prior": "pink"}}),
    "fast, normal prior": ("fast", {"synthesis": {"prior": "normal"}}),
    "fast, translate 0.125": ("fast", {"training": {"translate": 0.125}}),
    "fast, noise mix 0.25": ("fast", {"training": {"noise_mix": 0.25}}),
    "fast, noise mix 0.5": ("fast", {"training": {"noise_mix": 0.5}}),
    "fast, range contrast 1": ("fast", {"training": {"range_contrast": 1.0}}),
    "fast, range contrast 2": ("fast", {"training": {"range_contrast": 2.0}}),
    "fast, range contrast 5": ("fast", {"training": {"range_contrast": 5.0}}),
    "default, range contrast 1": ("default", {"training": {"range_contrast": 1.0}}),
    "default, range contrast 2": ("default", {"training": {"range_contrast": 2.0}}),
    "fast, cutmix 0": ("fast", {"training": {"cutmix": 0.0}}),
    "fast, cutmix 0.5": ("fast", {"training": {"cutmix": 0.5}}),
    "default, cutmix 0": ("default", {"training": {"cutmix": 0.0}}),
    "fast, temperature 4": ("fast", {"training": {"temperature": 4.0}}),
    "fast, cutmix 0.5 clean": ("fast", {"training": {"cutmix": 0.5, "mixup": 0.0}}),
    "fast, contrastive 0": ("fast", {"synthesis": {"weights": {"contr": 0.0}}}),
    "fast, contrastive 100": ("fast", {"synthesis": {"weights": {"contr": 100.0}}}),
    "fast, snapshots 2": ("fast", {"synthesis": {"snapshots": 2}}),
    "fast, snapshots 2 x 30 epochs": (
        "fast",
        {"synthesis": {"snapshots": 2}, "training": {"epochs": 30}},
    ),
    # the `fast` preset before the fidelity zoo (6,400 samples x 100 steps, TV 1e5, decay 2)
    "fast before zoo": (
        "fast",
        {
            "synthesis": {
                "num_samples": 6400,
                "steps": 100,
                "noise_decay_magnitude": 2.0,
                "parameterization": "pixel",
                "weights": {"tv": 1e5, "bn": 0.0},
            },
            "training": {"holdout_fraction": 0.01, "input_noise": 0.3, "cutmix": 0.0},
        },
    ),
}

# Per run, and mean ± std per row; NaN where a run has no such value (a reference row has no
# synthesis; an engine without a fidelity estimate reports none).
ACCURACY = ("teacher_accuracy", "student_accuracy", "accuracy_ratio", "agreement_eval")
FIDELITY = ("agreement_synthetic", "fidelity_estimate", "estimate_gap", "on_target")
COST = ("synthesis_seconds", "training_seconds", "total_seconds", "num_samples")
METRICS = ACCURACY + FIDELITY + COST


@functools.cache
def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def synthesis_cache_key(teacher: CachedTeacher, spec: dict[str, Any]) -> str:
    """Key of a zoo teacher's synthetic set: the synthesis spec and seed, and the teacher file's
    sha256, so a retrained teacher never meets the sets of the old one."""
    return synthesis_key(teacher.name, spec, teacher.num_classes) + _file_sha256(teacher.path)


@dataclass(frozen=True)
class Row:
    """One table row: a preset, a variant (preset + overrides), or a reference (no synthesis)."""

    label: str
    kind: str  # "preset", "variant", "ceiling" or "floor"
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)

    def spec(self, seed: int, student: dict[str, Any]) -> dict[str, Any]:
        base = {"preset": self.preset, "seed": seed, "student": dict(student)}
        return base | copy.deepcopy(self.overrides)


@torch.no_grad()
def teacher_probs(teacher: torch.nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The teacher's softmax over ``x`` (CPU), in batches."""
    return torch.cat([teacher(b.to(device)).float().softmax(1).cpu() for b in x.split(1024)])


@dataclass
class References:
    """A teacher loaded once for its reference rows, with its teacher-labelled training split."""

    module: torch.jit.ScriptModule
    ceiling: SyntheticSet
    labelling_seconds: float
    eval_data: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def load(cls, teacher: CachedTeacher, runtime: Runtime) -> References:
        module, info = inspect_teacher(teacher.path, teacher.input_shape, device=runtime.device)
        if runtime.channels_last and len(info.input_shape) == 3:  # as run_job does
            module = module.to(memory_format=torch.channels_last)
        x_train = torch.from_numpy(ZOO[teacher.name].data().x_train).float()
        started = time.perf_counter()
        probs = teacher_probs(module, x_train, runtime.device)
        eval_data = load_eval_arrays(str(teacher.eval_path), info.input_shape, info.num_classes)
        return cls(module, SyntheticSet(x_train, probs), time.perf_counter() - started, eval_data)


@dataclass
class PairRunner:
    """Runs the rows of one teacher -> student pair; a failed run is a record with its error."""

    teacher: CachedTeacher
    student: str
    student_spec: dict[str, Any]
    runtime: Runtime
    shared: dict[tuple[str, str], dict[str, Any]]  # synthetic sets, for SynthesisReuse
    workdir: Path
    refs: References | None

    def run(self, row: Row, seed: int) -> dict[str, Any]:
        record: dict[str, Any] = {"teacher": self.teacher.name, "student": self.student}
        record.update(row=row.label, seed=seed)
        started = time.perf_counter()
        try:
            if row.kind in ("ceiling", "floor"):
                metrics = self.reference(row, seed, record)
            else:
                metrics = self.job(row, seed, record)
        except Exception as exc:  # an invalid or diverged job is a result worth reporting
            record["error"] = f"{type(exc).__name__}: {exc}"[:400]
        else:
            record.update({k: float(metrics.get(k, math.nan)) for k in METRICS})
            record.update({k: float(v) for k, v in metrics.items() if k.startswith("estimate_")})
            record["estimate_gap"] = abs(record["fidelity_estimate"] - record["agreement_eval"])
        record["wall_seconds"] = time.perf_counter() - started
        return record

    def job(self, row: Row, seed: int, record: dict[str, Any]) -> dict[str, float]:
        """A whole job through run_job, exactly as the CLI and the service run it."""
        teacher, spec = self.teacher, row.spec(seed, self.student_spec)
        if teacher.input_range is not None:
            spec.setdefault("input_range", list(teacher.input_range))
        store = SynthesisReuse(self.shared, synthesis_cache_key(teacher, spec))
        out_dir = tempfile.mkdtemp(prefix=f"{teacher.name}-", dir=self.workdir)
        result = run_job(
            teacher.path,
            teacher.input_shape,
            spec,
            out_dir,
            eval_path=teacher.eval_path,
            runtime=self.runtime,
            checkpoints=store,
            diagnostics=True,
        )
        record["synthesis_reused"] = store.hits > 0
        record["spec"] = result.spec.to_dict()
        targets = [e["target_accuracy"] for e in result.synthesis_log if "target_accuracy" in e]
        on_target = sum(targets) / len(targets) if targets else math.nan
        return {**result.metrics, "on_target": on_target}

    def reference(self, row: Row, seed: int, record: dict[str, Any]) -> dict[str, float]:
        """The job's training, on teacher-labelled real inputs (ceiling) or noise (floor)."""
        assert self.refs is not None
        refs, runtime, started = self.refs, self.runtime, time.perf_counter()
        shape, classes = self.teacher.input_shape, self.teacher.num_classes
        spec = resolve_spec(row.spec(seed, self.student_spec), num_classes=classes)
        data, labelling = refs.ceiling, refs.labelling_seconds  # labelled once per teacher
        if row.kind == "floor":
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn((spec.synthesis.num_samples, *shape), generator=gen)
            data = SyntheticSet(x, teacher_probs(refs.module, x, runtime.device))
            labelling = time.perf_counter() - started
        torch.manual_seed(spec.seed)
        arch = spec.student.arch or default_arch(shape)
        width = spec.student.width
        if width is None:  # as run_job chooses it: from half the teacher's parameters
            teacher_parameters = sum(p.numel() for p in refs.module.parameters())
            width = choose_width(arch, shape, classes, teacher_parameters).width
        model = build_student(arch, shape, classes, width)
        train, holdout = data.split(spec.training.holdout_fraction, spec.seed)
        # The same number of optimizer steps as the job: the real split is smaller (digits) or
        # larger (Fashion-MNIST) than the synthetic set, so epochs scale by the size ratio.
        training = spec.training
        if row.kind == "ceiling":
            epochs = round(training.epochs * spec.synthesis.num_samples / len(data))
            training = replace(training, epochs=max(1, epochs))
        trained = time.perf_counter()
        inputs = (model, refs.module, train, holdout, training, runtime)
        history = train_student(*inputs, seed=spec.seed, num_classes=classes)
        training_seconds = time.perf_counter() - trained
        metrics = evaluate_on_data(refs.module, model, *refs.eval_data, runtime.device)
        record.update(labelling_seconds=labelling, spec=spec.to_dict())
        return {
            **metrics,
            "accuracy_ratio": metrics["student_accuracy"] / max(metrics["teacher_accuracy"], 1e-12),
            "agreement_synthetic": history[-1]["agreement_synthetic"],
            "training_seconds": training_seconds,
            "num_samples": float(len(data)),
            # the ceiling's labelling was spent once per teacher, before this run's clock
            "total_seconds": time.perf_counter() - started + (row.kind == "ceiling") * labelling,
        }


def rows_for(args: argparse.Namespace) -> list[tuple[Row, list[int]]]:
    """Rows in order with their seeds: ceiling, presets, variants, floor."""

    def seeds(preset: str) -> list[int]:
        count = args.seeds or DEFAULT_SEEDS.get(preset, FALLBACK_SEEDS)
        return list(range(args.first_seed, args.first_seed + count))

    first = args.presets[0]
    rows = [(Row(p, "preset", p), seeds(p)) for p in args.presets]
    rows += [(Row(v, "variant", *VARIANTS[v]), seeds(VARIANTS[v][0])) for v in args.variants]
    if args.references:
        rows.insert(0, (Row("ceiling", "ceiling", first), seeds(first)))
        rows.append((Row("floor", "floor", first), seeds(first)))
    return rows


def summarize(row: Row, records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if "error" not in r]
    summary: dict[str, Any] = {
        "row": row.label,
        "kind": row.kind,
        "preset": row.preset,
        "overrides": row.overrides,
        "seeds": [r["seed"] for r in records],
        "failed": [r["error"] for r in records if "error" in r],
        "synthesis_reused": any(r.get("synthesis_reused") for r in ok),
    }
    # The engine's candidate estimates (estimate_probes) ride along, so a later look at which
    # lands nearest the real agreement needs no rerun.
    probes = sorted({k for r in ok for k in r if k.startswith("estimate_") and k not in METRICS})
    for key in (*METRICS, *probes):
        values = [r[key] for r in ok if key in r and not math.isnan(r[key])]
        mean, std = mean_std(values)
        summary[key] = {"mean": mean, "std": std, "values": values}
    return summary


def _cell(key: str, digits: int = 3, first: bool = False) -> Callable[[dict[str, Any]], str]:
    return lambda row: fmt_mean_std(row[key]["values"][:1] if first else row[key]["values"], digits)


# The numeric columns after "teacher -> student", "row" and "seeds": header, cell of a row summary.
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("teacher acc", _cell("teacher_accuracy", first=True)),
    ("student acc", _cell("student_accuracy")),
    ("student / teacher", _cell("accuracy_ratio")),
    ("agreement (real)", _cell("agreement_eval")),
    ("fidelity estimate", _cell("fidelity_estimate")),
    ("|est - agr|", lambda r: fmt_mean_std([r["estimate_gap"]["mean"]])),  # mean only
    ("on-target", _cell("on_target", 2)),
    ("synth s", lambda r: _cell("synthesis_seconds", 1)(r) + "*" * r["synthesis_reused"]),
    ("train s", _cell("training_seconds", 1)),
)


def print_table(pairs: list[dict[str, Any]]) -> None:
    table = new_table(
        "Fidelity zoo: students on real held-out data (mean ± std over seeds)",
        ["teacher -> student", "row", ("seeds", "right")] + [(h, "right") for h, _ in COLUMNS],
    )
    notes: list[str] = []
    for i, pair in enumerate(pairs):
        if i:
            table.add_section()
        for j, row in enumerate(pair["rows"]):
            ok = len(row["student_accuracy"]["values"])
            seeds = f"{ok}" if not row["failed"] else f"{ok}/{len(row['seeds'])}"
            if row["failed"]:
                notes.extend(row["failed"])
                seeds += f" [yellow][{len(notes)}][/]"
            cells = [cell(row) for _, cell in COLUMNS]
            table.add_row(pair["label"] if j == 0 else "", row["row"], seeds, *cells)
    console.print(table)
    console.print(
        "agreement (real): share of real test samples where student and teacher predict the same "
        "class; fidelity estimate: the engine's data-free estimate of it (- when not reported); "
        "|est - agr|: mean over seeds of their distance; on-target: share of synthetic samples "
        "the teacher puts in their intended class; ceiling / floor: the same training on the "
        "teacher-labelled real training split / on Gaussian noise, no synthesis. * synthetic set "
        "reused from a run with the same synthesis spec and seed (its synthesis time).",
        highlight=False,
    )
    for number, note in enumerate(notes, 1):
        console.print(f"  [{number}] {note}", highlight=False)


def parse_variants(text: str) -> list[str]:
    """``all``, or a comma list of labels; "fast, bn prior 0" and "bn prior 0" both name one.

    A preset name followed by an option names that preset's row ("default, cutmix 0"); an
    option alone names the first row that has it (the ``fast`` one where both presets do).
    """
    by_option: dict[str, str] = {}
    for label in VARIANTS:
        by_option.setdefault(label.split(", ", 1)[-1], label)
    words = [w.strip() for w in text.split(",") if w.strip()]
    if words == ["all"]:
        return list(VARIANTS)
    labels, i = [], 0
    while i < len(words):
        pair = ", ".join(words[i : i + 2])
        if words[i] in PRESETS and pair in VARIANTS:
            labels.append(pair)
            i += 2
            continue
        if words[i] not in PRESETS:
            labels.append(by_option.get(words[i], words[i]))
        i += 1
    return labels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fidelity", description=__doc__.splitlines()[0]
    )
    add_common_args(parser)
    parser.add_argument(
        "--teachers", default=",".join(ZOO), help=f"comma list of: {', '.join(ZOO)} (default all)"
    )
    parser.add_argument("--presets", default="fast", help="comma list of presets (default fast)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per row (default: 3 for fast, 1 for others)"
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seed of each row's first run (default 0): more seeds of an earlier run add to it",
    )
    parser.add_argument(
        "--students",
        choices=("main", "all"),
        default="main",
        help="main: each teacher's first (main) student only; all: every student of the zoo",
    )
    parser.add_argument(
        "--references",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the ceiling (real inputs) and floor (noise inputs) rows (default on)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help=f"ablation rows, comma list or 'all' (default none): {'; '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--synthesis-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep synthetic sets in DIR and reuse them in later runs (same teacher weights, "
        "synthesis spec and seed): training-only variants then skip synthesis",
    )
    parser.add_argument(
        "--autocast",
        choices=("auto", "none", "bf16"),
        default="auto",
        help="precision of every job: auto is what a job gets on the device (bf16 on CUDA, fp32 "
        "on the CPU); none or bf16 force it, e.g. to see what bf16 changes on the CPU",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="JSON",
        help="run nothing: merge the results of earlier runs (other teachers) into one table and "
        "JSON in --out",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.teachers, args.presets, args.seeds = "digits_cnn,wine_mlp", "fast", 1
    args.teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.variants = parse_variants(args.variants)
    if unknown := sorted(set(args.teachers) - set(ZOO)):
        parser.error(f"unknown teachers: {', '.join(unknown)}")
    if unknown := sorted(set(args.variants) - set(VARIANTS)):
        parser.error(f"unknown variants: {'; '.join(unknown)}")
    if not args.presets:
        parser.error("--presets needs at least one preset")
    for preset in args.presets:
        try:
            resolve_spec({"preset": preset})
        except Exception as exc:
            parser.error(str(exc))
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.first_seed < 0:
        parser.error("--first-seed must not be negative")
    return args


def describe(r: dict[str, Any]) -> str:
    """The progress line of one finished run."""
    head = f"  {r['student']} {r['row']:<22} seed {r['seed']}:"
    if "error" in r:
        return f"{head} [red]failed[/] {r['error']}"
    if "labelling_seconds" in r:
        made = f"labelling {r['labelling_seconds']:.1f} s"
    else:
        made = f"synthesis {r['synthesis_seconds']:.1f} s" + ", reused" * r["synthesis_reused"]
    estimate = (
        "" if math.isnan(r["fidelity_estimate"]) else f", estimate {r['fidelity_estimate']:.3f}"
    )
    return (
        f"{head} student {r['student_accuracy']:.3f}, ratio {r['accuracy_ratio']:.3f}, agreement "
        f"{r['agreement_eval']:.3f}{estimate} ({made}, training {r['training_seconds']:.1f} s)"
    )


def run_teacher(
    name: str,
    args: argparse.Namespace,
    runtime: Runtime,
    shared: dict[tuple[str, str], dict[str, Any]],
    workdir: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every row of every chosen student of one teacher: (pair summaries, run records)."""
    started = time.perf_counter()
    teacher = get_teacher(name, seed=0)
    refs = References.load(teacher, runtime) if args.references else None
    console.print(
        f"[bold]{name}[/]: teacher test accuracy {teacher.test_accuracy:.3f}, input "
        f"{list(teacher.input_shape)}, {teacher.num_classes} classes (ready in "
        f"{time.perf_counter() - started:.1f} s)",
        highlight=False,
    )
    pairs, runs = [], []
    for student, spec in list(ZOO[name].students.items())[: None if args.students == "all" else 1]:
        runner = PairRunner(teacher, student, spec, runtime, shared, workdir, refs)
        summaries = []
        for row, seeds in rows_for(args):
            records = []
            for seed in seeds:
                records.append(runner.run(row, seed))
                console.print(describe(records[-1]), highlight=False)
            runs.extend(records)
            summaries.append(summarize(row, records))
        label = f"{name} -> {student}"
        pairs.append({"label": label, "teacher": name, "student": spec, "rows": summaries})
    return pairs, runs


def merge_results(paths: list[Path]) -> dict[str, Any]:
    """One payload from runs of different teachers (same device kind): rows and runs joined.

    ``machine``, ``runtime`` and ``variants`` come from the first file; each file's command and
    machine load are kept under ``merged_from``, so the table says how it was made.
    """
    payloads = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    devices = {payload["machine"].get("device") for payload in payloads}
    if len(devices) > 1:
        raise ValueError(f"results from different devices cannot share a table: {sorted(devices)}")
    seen: dict[str, Path] = {}
    for path, payload in zip(paths, payloads, strict=True):
        for pair in payload["pairs"]:
            if pair["label"] in seen:
                raise ValueError(f"{pair['label']} is in both {seen[pair['label']]} and {path}")
            seen[pair["label"]] = path
    first = payloads[0]
    return {
        **{k: v for k, v in first.items() if k not in ("pairs", "runs", "command")},
        "command": command_line(),
        "merged_from": [
            {"file": str(path), "command": p["command"], "machine": p["machine"]}
            for path, p in zip(paths, payloads, strict=True)
        ],
        "skipped_teachers": sorted({t for p in payloads for t in p["skipped_teachers"]}),
        "teacher_errors": {k: v for p in payloads for k, v in p["teacher_errors"].items()},
        "pairs": [pair for p in payloads for pair in p["pairs"]],
        "runs": [run for p in payloads for run in p["runs"]],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        payload = merge_results(args.merge)
        print_table(payload["pairs"])
        for name, error in payload["teacher_errors"].items():
            console.print(f"[red]teacher {name} failed:[/] {error}", highlight=False)
        device = torch.device(payload["machine"]["device"])
        console.print(f"wrote {write_results(args.out, 'fidelity', device, payload)}")
        return 0
    device, runtime = setup_runtime(args.device, args.threads)
    threads = torch.get_num_threads()
    if args.autocast != "auto":
        runtime = replace(runtime, autocast=None if args.autocast == "none" else args.autocast)
    info = machine_info(device)
    meter = BusyMeter()
    # Without the data set a cached teacher still runs (its test split is cached), but not its
    # ceiling row, which trains on the real training split.
    skipped = [
        t
        for t in args.teachers
        if "fmnist" in t and not fashion_mnist_available() and (args.references or not is_cached(t))
    ]
    for name in skipped:
        console.print(f"[yellow]skipping {name}[/]: {FASHION_MNIST_HINT}", highlight=False)
    names = [t for t in args.teachers if t not in skipped]
    console.print(
        f"[bold]bench.fidelity[/] on {info['device_name']} ({device}), torch "
        f"{info['torch_version']}, {threads} threads: {len(names)} teacher(s), "
        f"{len(rows_for(args))} row(s) per student, students: {args.students}"
    )
    # Synthetic sets shared by runs with the same teacher, synthesis spec and seed (deterministic:
    # the same set), as bench.quality's ablations do; training always starts from scratch.
    shared = SynthesisSets(args.synthesis_cache)
    pairs: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    teacher_errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cake-fidelity-") as tmp:
        for name in names:
            try:
                teacher_pairs, teacher_runs = run_teacher(name, args, runtime, shared, Path(tmp))
            except Exception as exc:  # a teacher that cannot be trained or loaded: report it
                teacher_errors[name] = f"{type(exc).__name__}: {exc}"[:400]
                console.print(f"[red]{name}: failed[/] {teacher_errors[name]}", highlight=False)
                continue
            pairs.extend(teacher_pairs)
            runs.extend(teacher_runs)
    print_table(pairs)
    for name, error in teacher_errors.items():
        console.print(f"[red]teacher {name} failed:[/] {error}", highlight=False)
    busy = meter.summary()
    console.print(describe_busy(busy, info["load_average_start"]))
    payload = {
        "benchmark": "fidelity",
        "command": command_line(),
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {**info, **busy},
        "runtime": asdict(runtime),
        "variants": {k: {"preset": p, "overrides": o} for k, (p, o) in VARIANTS.items()},
        "skipped_teachers": skipped,
        "teacher_errors": teacher_errors,
        "pairs": pairs,
        "runs": runs,
    }
    path = write_results(args.out, "fidelity", device, payload)
    console.print(f"wrote {path}")
    return 0 if not teacher_errors and all("error" not in r for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
