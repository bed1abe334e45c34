"""Synthesis speed: the engine's batched CAKE synthesis against the reference-style loop.

The claim under test: running many mini-batches at once as one large batch (each with its own
step size, ``cake_core.synthesis.synthesize``) is faster than the reference's loop, one
mini-batch of 100 at a time with ``torch.optim.SGD`` on the inputs
(``bench.reference_synthesis.reference_synthesize``), on the same work and the same
teacher. Both run side by side in one process, so machine, teacher and load are shared.

Every row does the same work: ``M`` mini-batches of 100 samples, ``T`` input-gradient steps each.
The rate is sample-steps per second (``M * 100 * T / seconds``); the ratio is against the
reference row. Rows add one speed lever at a time (chunking, channels-last, bf16, compilation),
then a sweep over the chunk size ``K``. A correctness guard runs every configuration on a small
case and reports the largest difference of the final inputs from the reference loop's.

    python -m bench.synthesis            # full size (CPU: about 4 minutes)
    python -m bench.synthesis --quick    # seconds, for a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.common import (
    BusyMeter,
    add_common_args,
    command_line,
    console,
    describe_busy,
    fmt_count,
    machine_info,
    new_table,
    setup_device,
    synchronize,
    time_repeats,
    write_results,
)
from bench.reference_synthesis import reference_synthesize
from cake_core.config import SynthesisSpec
from cake_core.device import AttentionKernel, Runtime
from cake_core.students import build_student
from cake_core.synthesis import plan_synthesis, synthesize
from cake_core.teacher import load_teacher

BATCH_SIZE = 100
GROUPS = 10
NUM_CLASSES = 10
WARMUP_STEPS = 3

Teacher = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Case:
    """One teacher and the fixed work every row of its table does."""

    name: str
    arch: str
    input_shape: tuple[int, ...]
    width: float
    batches: int  # M mini-batches of BATCH_SIZE samples
    steps: int  # T input-gradient steps per mini-batch
    chunk: int  # K mini-batches at once in the lever rows

    @property
    def sample_steps(self) -> int:
        return self.batches * BATCH_SIZE * self.steps


# Sizes per device kind. CPU: the reference loop takes a few seconds per teacher and the whole
# full run stays under ~4 minutes on 2 cores. CUDA: the reference's M = 256 mini-batches, with
# large K (all 256 at once for LeNet) because that is where a GPU gains most.
DEFAULT_CASES: dict[str, list[Case]] = {
    "cpu": [
        Case("lenet5", "lenet5", (1, 28, 28), 1.0, batches=64, steps=8, chunk=16),
        Case("resnet18", "resnet18", (3, 32, 32), 0.0625, batches=16, steps=8, chunk=16),
        Case("vit", "vit", (1, 8, 8), 0.5, batches=32, steps=8, chunk=32),
    ],
    "cuda": [
        Case("lenet5", "lenet5", (1, 28, 28), 1.0, batches=256, steps=20, chunk=256),
        Case("resnet18", "resnet18", (3, 32, 32), 0.5, batches=128, steps=20, chunk=64),
        Case("vit", "vit", (1, 8, 8), 0.5, batches=256, steps=20, chunk=256),
    ],
    "quick": [
        Case("lenet5", "lenet5", (1, 28, 28), 1.0, batches=4, steps=3, chunk=4),
        Case("resnet18", "resnet18", (3, 32, 32), 0.0625, batches=2, steps=2, chunk=2),
        Case("vit", "vit", (1, 8, 8), 0.5, batches=2, steps=2, chunk=2),
    ],
}
DEFAULT_SWEEP = {"cpu": (1, 4, 16, 64), "cuda": (1, 4, 16, 64, 256), "quick": (1, 4)}
DEFAULT_MIN_SECONDS = {"cpu": 3.0, "cuda": 3.0, "quick": 0.0}
# fp32 rows must match the reference loop to rounding; cuDNN picks different algorithms per
# batch size, so the GPU tolerance is looser.
GUARD_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}


@dataclass(frozen=True)
class Variant:
    """How one row runs: the reference loop, or the engine with a set of levers."""

    label: str
    section: str  # "levers", "compile" or "sweep"
    reference: bool = False
    chunk: int = 1
    autocast: str | None = None
    channels_last: bool = False
    compile: str | None = None  # "torch.compile", "torch.compile-script", "freeze", "ofi"
    attention: AttentionKernel = "default"

    def levers(self) -> str:
        if self.reference:
            return "1 mini-batch, torch.optim.SGD, fp32"
        parts = [f"K={self.chunk}", self.autocast or "fp32"]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append(COMPILE_NAMES[self.compile])
        if self.attention != "default":
            parts.append(f"{self.attention} attention")
        return ", ".join(parts)


COMPILE_NAMES = {
    "torch.compile": "torch.compile(nn.Module)",
    "torch.compile-script": "torch.compile(TorchScript)",
    "freeze": "torch.jit.freeze",
    "ofi": "torch.jit.optimize_for_inference",
}


@dataclass
class Row:
    """One measured (or refused) row of the table."""

    label: str
    section: str
    levers: str
    variant: dict[str, Any]
    status: str = "ok"  # "ok", "failed", "skipped"
    reason: str = ""
    rate: float = float("nan")  # median sample-steps per second
    best_rate: float = float("nan")
    ratio: float = float("nan")  # rate / reference rate
    seconds: list[float] = field(default_factory=list)
    warmup_seconds: float = float("nan")
    guard_max_abs_diff: float | None = None
    guard_ok: bool | None = None


class GradPathCompiled:
    """A ``torch.compile``'d teacher for the gradient steps, eager for the no-grad forward.

    Synthesis calls the teacher with gradients ``T`` times per chunk and once without (the final
    logits). Compiling the no-grad call too costs a second full compilation for ``1/(T+1)`` of
    the calls, so that one call runs the eager module with the same weights.
    """

    def __init__(self, compiled: Teacher, eager: Teacher) -> None:
        self.compiled = compiled
        self.eager = eager

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x) if torch.is_grad_enabled() else self.eager(x)


class TeacherFactory:
    """Builds the case's teacher in each form a row needs, all with the same weights.

    The TorchScript teacher goes through a file and :func:`cake_core.teacher.load_teacher`,
    exactly as the service receives an upload (eval mode, frozen parameters).
    """

    def __init__(self, case: Case, device: torch.device, workdir: Path) -> None:
        torch.manual_seed(0)
        module = build_student(case.arch, case.input_shape, NUM_CLASSES, case.width).eval()
        for param in module.parameters():
            param.requires_grad_(False)
        self.module = module
        self.device = device
        self.path = workdir / f"{case.name}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(module), str(self.path))
        self.parameters = sum(p.numel() for p in module.parameters())

    def scripted(self, channels_last: bool) -> torch.jit.ScriptModule:
        teacher = load_teacher(self.path, self.device)
        if channels_last:
            # What cake_core.pipeline.run_job does with runtime.channels_last on image inputs.
            teacher = teacher.to(memory_format=torch.channels_last)
        return teacher

    def eager(self, channels_last: bool) -> nn.Module:
        module = copy.deepcopy(self.module).to(self.device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def build(self, variant: Variant) -> Teacher:
        """The teacher for ``variant``; raises with the reason when its compilation fails."""
        cl = variant.channels_last
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if variant.compile == "torch.compile":
                eager = self.eager(cl)
                return GradPathCompiled(torch.compile(eager, dynamic=False), eager)
            if variant.compile == "torch.compile-script":
                return torch.compile(self.scripted(cl), dynamic=False)
            if variant.compile == "freeze":
                return torch.jit.freeze(self.scripted(cl))
            if variant.compile == "ofi":
                return torch.jit.optimize_for_inference(self.scripted(cl))
        return self.scripted(cl)


def spec_for(case: Case, chunk: int, steps: int, noise: float, batches: int) -> SynthesisSpec:
    """The job every row runs: reference loss weights, SGD on the inputs."""
    return SynthesisSpec(
        num_samples=batches * BATCH_SIZE,
        batch_size=BATCH_SIZE,
        groups=GROUPS,
        steps=steps,
        noise=noise,
        optimizer="sgd",
        chunk_batches=chunk,
    )


def run_reference(
    teacher: Teacher, spec: SynthesisSpec, case: Case, runtime: Runtime, seed: int
) -> torch.Tensor:
    """All final inputs of the reference loop, ``[N, *shape]`` on the CPU."""
    out = [
        x.float().cpu()
        for x, _ in reference_synthesize(
            teacher, spec, case.input_shape, NUM_CLASSES, seed=seed, runtime=runtime
        )
    ]
    return torch.cat(out)


def run_engine(
    teacher: Teacher, spec: SynthesisSpec, case: Case, runtime: Runtime, seed: int
) -> torch.Tensor:
    """All final inputs of the engine, ``[N, *shape]`` on the CPU (chunks are moved there)."""
    chunks: Iterator = synthesize(
        teacher, spec, case.input_shape, NUM_CLASSES, seed=seed, runtime=runtime
    )
    return torch.cat([chunk.x for chunk in chunks])


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}"[:240]


def _check_input_grad(teacher: Teacher, case: Case, device: torch.device) -> None:
    """Compilation that drops the autograd graph is useless for synthesis: say so up front."""
    x = torch.randn(2, *case.input_shape, device=device, requires_grad=True)
    out = teacher(x)
    if not out.requires_grad:
        raise RuntimeError("output does not depend on the input through autograd")
    (grad,) = torch.autograd.grad(out.float().sum(), x)
    if not bool(torch.isfinite(grad).all()):
        raise RuntimeError("gradient w.r.t. the input is not finite")


def measure(
    case: Case,
    variant: Variant,
    factory: TeacherFactory,
    args: argparse.Namespace,
    guard_x: torch.Tensor | None,
    tolerance: float,
) -> Row:
    """Warm up, time, and guard one row; failures become a row with the reason."""
    device = factory.device
    row = Row(variant.label, variant.section, variant.levers(), asdict(variant))
    runtime = Runtime(
        device,
        autocast=variant.autocast,
        channels_last=variant.channels_last,
        attention=variant.attention,
    )
    teacher: Teacher | None = None
    job: Callable[[], torch.Tensor] | None = None
    kernels = contextlib.ExitStack()
    try:
        kernels.enter_context(runtime.kernels())
        warm_started = time.perf_counter()
        teacher = factory.build(variant)
        if variant.compile is not None and variant.compile != "torch.compile":
            _check_input_grad(teacher, case, device)
        work = spec_for(case, variant.chunk, case.steps, args.noise, case.batches)
        if variant.reference:
            warm = spec_for(case, 1, WARMUP_STEPS, args.noise, 1)
            run_reference(teacher, warm, case, runtime, args.seed)
            job = functools.partial(run_reference, teacher, work, case, runtime, args.seed)
        else:
            warm = spec_for(case, variant.chunk, WARMUP_STEPS, args.noise, variant.chunk)
            run_engine(teacher, warm, case, runtime, args.seed)
            job = functools.partial(run_engine, teacher, work, case, runtime, args.seed)

        synchronize(device)
        row.warmup_seconds = time.perf_counter() - warm_started
        row.seconds = time_repeats(job, device, min_seconds=args.min_seconds)
        rates = [case.sample_steps / s for s in row.seconds]
        row.rate = sorted(rates)[len(rates) // 2]
        row.best_rate = max(rates)
        if guard_x is not None and not variant.reference:
            guard = spec_for(case, variant.chunk, args.guard_steps, args.noise, case.chunk)
            x = run_engine(teacher, guard, case, runtime, args.seed)
            row.guard_max_abs_diff = float((x - guard_x).abs().max())
            if variant.autocast is None:
                row.guard_ok = row.guard_max_abs_diff <= tolerance
    except Exception as exc:  # CakeError, OOM, and whatever a compiler backend raises
        row.status, row.reason = "failed", _reason(exc)
    finally:
        kernels.close()
        teacher = job = None  # free the teacher (and its compiled code) before the next row
        if variant.compile in ("torch.compile", "torch.compile-script"):
            torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def lever_variants(case: Case) -> list[Variant]:
    k = case.chunk
    return [
        Variant("reference loop", "levers", reference=True),
        Variant(f"batched (K={k})", "levers", chunk=k),
        Variant("+ channels_last", "levers", chunk=k, channels_last=True),
        Variant("+ bf16 autocast", "levers", chunk=k, channels_last=True, autocast="bf16"),
    ] + (
        # What run_job's tune_attention picks on this CPU for small-image ViTs (fp32).
        [Variant("+ math attention", "levers", chunk=k, channels_last=True, attention="math")]
        if case.arch == "vit"
        else []
    )


def compile_variants(best: Variant) -> list[Variant]:
    """Compilation on top of the fastest lever set measured so far."""
    base = {"chunk": best.chunk, "autocast": best.autocast, "channels_last": best.channels_last}
    return [
        Variant("+ torch.compile (nn.Module)", "compile", compile="torch.compile", **base),
        Variant("+ torch.compile (TorchScript)", "compile", compile="torch.compile-script", **base),
        Variant("+ jit.freeze (TorchScript)", "compile", compile="freeze", **base),
        Variant("+ jit.optimize_for_inference", "compile", compile="ofi", **base),
    ]


def auto_chunk(case: Case, device: torch.device, noise: float) -> int:
    """The K a real job would use: ``chunk_batches = 0`` lets the engine pick it."""
    spec = spec_for(case, 0, case.steps, noise, case.batches)
    return plan_synthesis(spec, case.input_shape, Runtime(device)).chunk_batches


def sweep_variants(case: Case, sweep: tuple[int, ...], auto: int) -> list[Variant]:
    """fp32 rows over K, plus the K the engine picks by itself (``chunk_batches = 0``)."""
    chunks = sorted({min(k, case.batches) for k in sweep})
    variants = [Variant(f"sweep K={k}", "sweep", chunk=k) for k in chunks]
    label = f"sweep K=auto ({auto})"
    if auto in chunks:
        variants[chunks.index(auto)] = Variant(label, "sweep", chunk=auto)
    else:
        variants.append(Variant(label, "sweep", chunk=auto))
    return variants


def run_case(case: Case, args: argparse.Namespace, device: torch.device, workdir: Path) -> dict:
    """All rows of one teacher's table, in order, each against the same reference."""
    factory = TeacherFactory(case, device, workdir)
    tolerance = GUARD_TOLERANCE[device.type]
    console.print(
        f"[bold]{case.name}[/] {list(case.input_shape)}, width {case.width:g}, "
        f"{factory.parameters:,} parameters: M={case.batches} mini-batches x {BATCH_SIZE} "
        f"samples x T={case.steps} steps = {case.sample_steps:,} sample-steps per run"
    )
    # The guard's small case: one chunk of K mini-batches, a few steps, reference loop first.
    guard_spec = spec_for(case, 1, args.guard_steps, args.noise, case.chunk)
    guard_x = run_reference(factory.scripted(False), guard_spec, case, Runtime(device), args.seed)

    rows: list[Row] = []

    def add(variant: Variant) -> Row:
        console.print(f"  {variant.label:<32}", end="", highlight=False)
        if variant.compile == "torch.compile" and args.skip_compile_reason:
            row = Row(variant.label, variant.section, variant.levers(), asdict(variant))
            row.status, row.reason = "skipped", args.skip_compile_reason
        else:
            row = measure(case, variant, factory, args, guard_x, tolerance)
        if row.status == "ok":
            console.print(f"  {fmt_count(row.rate)} sample-steps/s", highlight=False)
        else:
            console.print(f"  [yellow]{row.status}[/]")
        rows.append(row)
        return row

    measured: dict[Variant, Row] = {}
    for variant in lever_variants(case):
        measured[variant] = add(variant)
    ok = [(v, r) for v, r in measured.items() if not v.reference and r.status == "ok"]
    best = max(ok, key=lambda vr: vr[1].rate)[0] if ok else lever_variants(case)[1]
    for variant in compile_variants(best):
        add(variant)
    main_batched = lever_variants(case)[1]
    for variant in sweep_variants(case, args.sweep, auto_chunk(case, device, args.noise)):
        if variant.chunk == case.chunk and measured[main_batched].status == "ok":
            row = copy.deepcopy(measured[main_batched])
            row.label, row.section = variant.label, "sweep"
            row.reason = "same configuration as the batched row (not re-measured)"
            rows.append(row)
            continue
        add(variant)

    reference = rows[0]
    for row in rows:
        if row.status == "ok" and reference.status == "ok":
            row.ratio = row.rate / reference.rate
    return {
        "case": asdict(case),
        "parameters": factory.parameters,
        "sample_steps_per_run": case.sample_steps,
        "guard": {
            "batches": case.chunk,
            "steps": args.guard_steps,
            "tolerance_fp32": tolerance,
            "passed": all(r.guard_ok is not False for r in rows),
        },
        "best_lever_set": best.levers(),
        "rows": [asdict(r) for r in rows],
    }


def print_case(result: dict) -> None:
    case = result["case"]
    title = (
        f"{case['name']} {case['input_shape']} (width {case['width']:g}): M={case['batches']} x "
        f"{BATCH_SIZE} samples x T={case['steps']} steps per run"
    )
    table = new_table(
        title,
        [
            "row",
            "levers",
            ("sample-steps/s", "right"),
            ("vs ref", "right"),
            ("s/run", "right"),
            ("runs", "right"),
            ("warm-up s", "right"),
            ("guard max|Δx|", "right"),
        ],
    )
    section = None
    notes: list[str] = []
    for row in result["rows"]:
        if section is not None and row["section"] != section:
            table.add_section()
        section = row["section"]
        if row["status"] != "ok":
            notes.append(row["reason"])
            status = f"[yellow]{row['status']} [{len(notes)}][/]"
            table.add_row(row["label"], row["levers"], status, "", "", "", "", "")
            continue
        guard = row["guard_max_abs_diff"]
        if guard is None:
            guard_text = "(reference)" if row["variant"]["reference"] else "-"
        elif row["guard_ok"] is None:
            guard_text = f"{guard:.1e} (bf16)"
        else:
            guard_text = f"{guard:.1e} {'ok' if row['guard_ok'] else '[red]FAIL[/]'}"
        seconds = sorted(row["seconds"])[len(row["seconds"]) // 2]
        table.add_row(
            row["label"],
            row["levers"],
            fmt_count(row["rate"]),
            f"{row['ratio']:.2f}x",
            f"{seconds:.2f}",
            str(len(row["seconds"])),
            f"{row['warmup_seconds']:.1f}",
            guard_text,
        )
    console.print(table)
    for number, note in enumerate(notes, 1):
        console.print(f"  [{number}] {note}", highlight=False)
    guard = result["guard"]
    verdict = "[green]passed[/]" if guard["passed"] else "[red]FAILED[/]"
    console.print(
        f"correctness guard ({guard['batches']} mini-batches x {guard['steps']} steps, same seed): "
        f"fp32 rows within {guard['tolerance_fp32']:g} of the reference loop: {verdict}\n"
    )


def select_cases(args: argparse.Namespace, kind: str) -> list[Case]:
    cases = DEFAULT_CASES["quick" if args.quick else kind]
    chosen = [c for c in cases if c.name in args.teachers]
    out = []
    for case in chosen:
        changes: dict[str, Any] = {}
        if args.batches is not None:
            changes["batches"] = args.batches
        if args.steps is not None:
            changes["steps"] = args.steps
        if args.chunk is not None:
            changes["chunk"] = args.chunk
        if args.resnet_width is not None and case.arch == "resnet18":
            changes["width"] = args.resnet_width
        case = replace(case, **changes)
        out.append(replace(case, chunk=max(1, min(case.chunk, case.batches))))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.synthesis", description=__doc__.splitlines()[0]
    )
    add_common_args(parser)
    parser.add_argument(
        "--teachers", default="lenet5,resnet18,vit", help="comma list of: lenet5, resnet18, vit"
    )
    parser.add_argument("--batches", type=int, help="M mini-batches per run (all teachers)")
    parser.add_argument("--steps", type=int, help="T steps per mini-batch (all teachers)")
    parser.add_argument("--chunk", type=int, help="K mini-batches at once in the lever rows")
    parser.add_argument("--resnet-width", type=float, help="width multiplier of the ResNet-18")
    parser.add_argument(
        "--sweep", help="chunk sizes K of the sweep rows, comma list (default 1,4,16,64)"
    )
    parser.add_argument(
        "--min-seconds", type=float, help="time each row at least this long (repeating the run)"
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=1e-3,
        help="step size of the first mini-batch; it does not change the work, only keeps "
        "random-init teachers finite (default 1e-3)",
    )
    parser.add_argument("--guard-steps", type=int, default=5, help="steps of the guard case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="include the torch.compile row (default: on, off with --quick: it compiles "
        "for tens of seconds on a CPU)",
    )
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 on CUDA (off by default so fp32 rows are true fp32 and the guard holds)",
    )
    args = parser.parse_args(argv)
    args.teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    unknown = set(args.teachers) - {"lenet5", "resnet18", "vit"}
    if unknown:
        parser.error(f"unknown teachers: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = setup_device(args.device, args.threads)
    kind = device.type
    size = "quick" if args.quick else kind
    if args.sweep is None:
        args.sweep = DEFAULT_SWEEP[size]
    else:
        args.sweep = tuple(int(k) for k in str(args.sweep).split(",") if k.strip())
    if args.min_seconds is None:
        args.min_seconds = DEFAULT_MIN_SECONDS[size]
    compile_on = (not args.quick) if args.compile is None else args.compile
    args.skip_compile_reason = (
        ""
        if compile_on
        else "--quick or --no-compile (torch.compile takes tens of seconds on a CPU)"
    )
    if kind == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True

    info = machine_info(device)
    meter = BusyMeter()
    console.print(
        f"[bold]bench.synthesis[/] on {info['device_name']} ({device}), torch "
        f"{info['torch_version']}, {info['torch_threads']} threads, "
        f"{'quick' if args.quick else 'full'} size"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="cake-bench-") as tmp:
        for case in select_cases(args, kind):
            result = run_case(case, args, device, Path(tmp))
            print_case(result)
            results.append(result)
    busy = meter.summary()
    console.print(describe_busy(busy, info["load_average_start"]))
    payload = {
        "benchmark": "synthesis",
        "command": command_line(),
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {**info, **busy},
        "settings": {
            "batch_size": BATCH_SIZE,
            "groups": GROUPS,
            "num_classes": NUM_CLASSES,
            "warmup_steps": WARMUP_STEPS,
            "optimizer": "sgd",
            "rate": "sample-steps per second = M * batch_size * T / seconds (median run)",
            "tf32": bool(args.tf32) if kind == "cuda" else None,
        },
        "cases": results,
    }
    path = write_results(args.out, "synthesis", device, payload)
    console.print(f"wrote {path}")
    guard_ok = all(r["guard"]["passed"] for r in results)
    return 0 if guard_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
