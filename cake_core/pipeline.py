"""One function that runs a whole job: synthesize, train, evaluate, export.

The CLI and the service's worker both call :func:`run_job`. It reports progress through a
callback, asks ``should_cancel`` between steps, and saves checkpoints through a
:class:`CheckpointStore` after every synthesis chunk and every training epoch, so a job that is
interrupted (worker killed, machine restarted) resumes from its last finished chunk or epoch.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from cake_core.architectures import student_arch
from cake_core.batchnorm import tap_batchnorm
from cake_core.config import WIDTH_GIVEN, JobSpec, resolve_spec
from cake_core.deploy import Deployment, build_deployment, skipped_deployment
from cake_core.device import Runtime, default_runtime, tune_attention
from cake_core.distill import SyntheticSet, TrainingState, train_student
from cake_core.errors import JobCanceled
from cake_core.evaluate import (
    estimate_probes,
    evaluate_on_data,
    fidelity_estimate,
    load_eval_arrays,
)
from cake_core.export import (
    export_student,
    library_versions,
    write_manifest,
    write_sample_grid,
)
from cake_core.report import write_curves, write_report
from cake_core.students import build_student, choose_width
from cake_core.synthesis import SyntheticChunk, plan_synthesis, synthesize
from cake_core.teacher import TeacherInfo, inspect_teacher, load_teacher

PHASES = ("synthesizing", "training", "evaluating", "exporting")
# Share of the overall progress bar each phase takes.
_PHASE_SPAN = {
    "synthesizing": (0.0, 0.6),
    "training": (0.6, 0.95),
    "evaluating": (0.95, 0.97),
    "exporting": (0.97, 1.0),
}


@dataclass
class Progress:
    """One progress report: ``fraction`` is the overall job progress in [0, 1].

    With ``event`` set it is a one-off entry for the job's log rather than progress: ``event``
    is its type (e.g. ``student``), ``level`` ``info`` or ``warning``, ``data`` its details;
    ``phase`` and ``fraction`` are where the job stands, unchanged by it.
    """

    phase: str
    fraction: float
    phase_fraction: float
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    event: str | None = None
    level: str = "info"
    data: dict[str, Any] = field(default_factory=dict)


class CheckpointStore(Protocol):
    """Where the pipeline keeps resumable state (local folder, object store...)."""

    def save(self, key: str, state: dict[str, Any]) -> None: ...

    def load(self, key: str) -> dict[str, Any] | None: ...


class DirectoryCheckpoints:
    """Checkpoints as files in a folder, written atomically (temp file, then rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / f"{key.replace('/', '__')}.pt"

    def save(self, key: str, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, self._path(key))

    def load(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.exists():
            return None
        # Our own checkpoints only hold tensors and plain containers: no pickled code is loaded.
        return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class JobResult:
    spec: JobSpec
    teacher: TeacherInfo
    metrics: dict[str, float]
    artifacts: dict[str, Path]
    history: list[dict[str, float]]
    synthesis_log: list[dict[str, float]]


ProgressCallback = Callable[[Progress], None]


class _Reporter:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.last = 0.0

    def __call__(
        self, phase: str, phase_fraction: float, message: str, metrics: dict | None = None
    ) -> None:
        low, high = _PHASE_SPAN[phase]
        # Monotone even when a resumed job reports an earlier chunk again.
        self.last = max(self.last, low + (high - low) * min(1.0, max(0.0, phase_fraction)))
        if self.callback is not None:
            self.callback(Progress(phase, self.last, phase_fraction, message, metrics or {}))

    def event(self, phase: str, event: str, message: str, level: str = "info", **data: Any) -> None:
        """A one-off log entry (see :class:`Progress`); the progress stays where it is."""
        if self.callback is not None:
            self.callback(Progress(phase, self.last, 0.0, message, {}, event, level, data))


def run_job(
    teacher_path: str | Path,
    input_shape: tuple[int, ...],
    spec: JobSpec | dict[str, Any] | None,
    out_dir: str | Path,
    *,
    eval_path: str | Path | None = None,
    runtime: Runtime | None = None,
    on_progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoints: CheckpointStore | None = None,
    diagnostics: bool = False,
) -> JobResult:
    """Run a distillation job end to end; write its artifacts into ``out_dir``.

    Artifacts: ``student.pt``, ``manifest.json``, ``curves.png`` (loss and agreement per epoch,
    synthesis loss per chunk), ``report.md`` (metrics, timings, deployment table, spec, both
    images linked), for image inputs ``samples.png``, and, each only when it passed its check
    (see :mod:`cake_core.deploy`; a failure there is a ``warning`` event, never the job's),
    ``student.onnx`` (ONNX Runtime gives student.pt's top-1 class on every held-out synthetic
    sample) and ``student.int8.onnx`` (it keeps at least 0.99 of the fp32 model's agreement with
    the teacher). The manifest's ``deployment`` section says what was kept and why, and holds
    the deployment table (size, parameters, CPU latency, agreement per artifact and runtime).

    Raises :class:`~cake_core.errors.CakeError` subclasses for anything the user can fix
    (invalid teacher, spec or data set; divergence) and :class:`JobCanceled` when canceled.
    ``diagnostics`` adds the candidate fidelity estimates of
    :func:`~cake_core.evaluate.estimate_probes` (``estimate_*``) to the metrics, for the
    fidelity zoo; jobs of the service and the CLI report only ``fidelity_estimate``.
    """
    started = time.perf_counter()
    runtime = runtime or default_runtime()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = _Reporter(on_progress)
    stop = should_cancel or (lambda: False)

    teacher, info = inspect_teacher(teacher_path, input_shape, device=runtime.device)
    if isinstance(spec, JobSpec):
        spec = resolve_spec(spec.to_dict(), num_classes=info.num_classes)
    else:
        spec = resolve_spec(spec, num_classes=info.num_classes)
    if runtime.channels_last and len(info.input_shape) == 3:
        teacher = teacher.to(memory_format=torch.channels_last)
    eval_arrays = (
        load_eval_arrays(str(eval_path), info.input_shape, info.num_classes)
        if eval_path is not None
        else None
    )
    runtime = tune_attention(teacher, info.input_shape, spec.synthesis.batch_size, runtime)
    with runtime.kernels():
        arch = student_arch(spec.student.arch, info.input_shape)  # the check the API made
        spec.student.arch = arch
        if spec.student.width is None:
            choice = choose_width(arch, info.input_shape, info.num_classes, info.parameters)
            spec.student.width, spec.student.width_reason = choice.width, choice.reason
        torch.manual_seed(spec.seed)
        student = build_student(arch, info.input_shape, info.num_classes, spec.student.width)
        _report_student(report, spec, info, sum(p.numel() for p in student.parameters()))

        data, synthesis_log, synthesis_seconds = _synthesize_all(
            teacher, spec, info, runtime, report, stop, checkpoints
        )
        if stop():
            raise JobCanceled("canceled")

        report("training", 0.0, "training the student")
        train_started = time.perf_counter()
        train, holdout = data.split(spec.training.holdout_fraction, spec.seed)
        resume_state = checkpoints.load("training") if checkpoints else None
        resume = TrainingState(**resume_state) if resume_state else None
        training_range, training_range_reason = _training_range(teacher, info.input_shape, spec)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            report(
                "training",
                epoch / spec.training.epochs,
                f"epoch {epoch}/{spec.training.epochs}: loss {metrics['loss']:.4f}, "
                f"agreement {metrics['agreement_synthetic']:.3f}",
                metrics,
            )

        history = train_student(
            student,
            teacher,
            train,
            holdout,
            spec.training,
            runtime,
            seed=spec.seed,
            num_classes=info.num_classes,
            resume=resume,
            on_epoch=on_epoch,
            on_checkpoint=(lambda state: checkpoints.save("training", asdict(state)))
            if checkpoints
            else None,
            should_stop=stop,
            input_range=training_range,
        )
        training_seconds = time.perf_counter() - train_started

        report("evaluating", 0.0, "evaluating the student")
        evaluation_started = time.perf_counter()
        student.eval()
        metrics: dict[str, float] = {
            "agreement_synthetic": history[-1]["agreement_synthetic"] if history else float("nan"),
            "teacher_parameters": float(info.parameters),
            "student_parameters": float(sum(p.numel() for p in student.parameters())),
            "compression": _compression(info.parameters, student),
            "synthesis_seconds": synthesis_seconds,
            "training_seconds": training_seconds,
            "samples_per_second": len(data) / synthesis_seconds if synthesis_seconds > 0 else 0.0,
            "num_samples": float(len(data)),
            "batchnorm_layers": float(_prior_layers(teacher, spec)),
        }
        metrics.update(fidelity_estimate(teacher, student, holdout.x, runtime.device))
        if diagnostics:
            probe_range = (
                (spec.input_range[0], spec.input_range[1]) if spec.input_range is not None else None
            )
            metrics.update(
                estimate_probes(teacher, student, holdout.x, runtime.device, spec.seed, probe_range)
            )
        if eval_arrays is not None:
            metrics.update(evaluate_on_data(teacher, student, *eval_arrays, runtime.device))
            metrics["accuracy_ratio"] = metrics["student_accuracy"] / max(
                metrics["teacher_accuracy"], 1e-12
            )
        report("evaluating", 1.0, "evaluated", metrics)
        evaluation_seconds = time.perf_counter() - evaluation_started

        if stop():
            raise JobCanceled("canceled")
        report("exporting", 0.0, "exporting the student")
        export_started = time.perf_counter()
        artifacts = {"student.pt": out / "student.pt", "manifest.json": out / "manifest.json"}
        exported = export_student(
            student, artifacts["student.pt"], info.input_shape, info.num_classes
        )
        deployment_started = time.perf_counter()
        deployment = _deploy(
            student, artifacts["student.pt"], teacher, teacher_path, info, train, holdout, out,
            runtime, report,
        )  # fmt: skip
        deployment_seconds = time.perf_counter() - deployment_started
        artifacts.update(deployment.artifacts)
        metrics.update(deployment.metrics)
        if write_sample_grid(out / "samples.png", data.x, data.labels, info.num_classes):
            artifacts["samples.png"] = out / "samples.png"
        write_curves(
            out / "curves.png", history, synthesis_log, agreement_eval=metrics.get("agreement_eval")
        )
        artifacts["curves.png"] = out / "curves.png"
        metrics["total_seconds"] = time.perf_counter() - started
        manifest = {
            "teacher": info.to_dict(),
            "input_shape": list(info.input_shape),
            "num_classes": info.num_classes,
            "spec": spec.to_dict(),
            "metrics": metrics,
            "student": {
                "arch": arch,
                "width": spec.student.width,
                "width_reason": spec.student.width_reason,
                **exported,
            },
            "history": history,
            "synthesis": synthesis_log,
            "versions": library_versions(),
            "device": str(runtime.device),
            "attention_kernel": runtime.attention,
            "deployment": deployment.section,
            "training_input_range": {"range": training_range, "reason": training_range_reason},
        }
        write_manifest(artifacts["manifest.json"], manifest)
        timings = {
            "synthesis": synthesis_seconds,
            "training": training_seconds,
            "evaluation": evaluation_seconds,
            "export": time.perf_counter() - export_started - deployment_seconds,
            "deployment": deployment_seconds,
            "total": metrics["total_seconds"],
        }
        artifacts["report.md"] = out / "report.md"
        write_report(artifacts["report.md"], manifest, timings, images=list(artifacts))
        report("exporting", 1.0, "done", metrics)
        return JobResult(spec, info, metrics, artifacts, history, synthesis_log)


def _deploy(
    student: torch.nn.Module,
    student_pt: Path,
    teacher: torch.jit.ScriptModule,
    teacher_path: str | Path,
    info: TeacherInfo,
    train: SyntheticSet,
    holdout: SyntheticSet,
    out: Path,
    runtime: Runtime,
    report: _Reporter,
) -> Deployment:
    """``student.onnx``, ``student.int8.onnx`` and the deployment table, measured on the CPU.

    The teacher's CPU copy is its reference and is timed beside the student: deployment
    targets are CPUs even when the job trained on a GPU. A job that holds no sample out checks
    on its training samples instead, and says so.
    """
    report("exporting", 0.3, "exporting student.onnx and student.int8.onnx")
    check_x, check_name = holdout.x, "held-out synthetic samples"
    if len(holdout) == 0:
        check_x, check_name = train.x, "synthetic training samples (the job holds none out)"
    try:
        cpu_teacher = teacher
        if runtime.device.type != "cpu":
            cpu_teacher = load_teacher(teacher_path, "cpu")
        deployment = build_deployment(
            student,
            student_pt,
            cpu_teacher,
            teacher_path,
            info.parameters,
            info.input_shape,
            check_x,
            train.x,
            out,
            check_name=check_name,
        )
    except Exception as exc:  # each artifact's own failure is handled inside; this is the rest
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        deployment = skipped_deployment(f"the deployment step failed: {reason}", out)
    for message, level, data in deployment.events:
        report.event("exporting", "deployment", message, level, **data)
    return deployment


def _compression(teacher_parameters: int, student: torch.nn.Module) -> float:
    """Teacher parameters / student parameters (> 1: the student is smaller)."""
    return float(teacher_parameters) / max(1, sum(p.numel() for p in student.parameters()))


def _report_student(
    report: _Reporter, spec: JobSpec, info: TeacherInfo, student_parameters: int
) -> None:
    """A ``student`` event: which student, its width and why; a warning when it is larger
    than its teacher."""
    arch, width = spec.student.arch, spec.student.width
    assert width is not None
    teacher_parameters = int(info.parameters)
    compression = teacher_parameters / max(1, student_parameters)
    message = (
        f"student {arch} width {width:g}: {student_parameters:,} parameters, teacher "
        f"{teacher_parameters:,} (compression {compression:.2f}x); {spec.student.width_reason}"
    )
    level = "info"
    if student_parameters > teacher_parameters:
        level = "warning"
        message = (
            f"the student is larger than its teacher: {arch} at width {width:g} has "
            f"{student_parameters:,} parameters, the teacher {teacher_parameters:,} "
            f"({spec.student.width_reason})"
        )
        if spec.student.width_reason == WIDTH_GIVEN:
            message += "; leave student.width out to get a student within half its size"
    report.event(
        "synthesizing",
        "student",
        message,
        level,
        arch=arch,
        width=width,
        width_reason=spec.student.width_reason,
        student_parameters=student_parameters,
        teacher_parameters=teacher_parameters,
        compression=compression,
    )


def _prior_layers(teacher: torch.jit.ScriptModule, spec: JobSpec) -> int:
    """How many BatchNorm layers the synthesis prior matched (0: off or none in the teacher)."""
    if spec.synthesis.weights.bn <= 0:
        return 0
    tap = tap_batchnorm(teacher)
    return tap.layers if tap is not None else 0


def _training_range(
    teacher: torch.jit.ScriptModule, input_shape: tuple[int, ...], spec: JobSpec
) -> tuple[tuple[float, float] | None, str]:
    """The range training images are stretched and clipped to (None: left as they are), and why.

    Only for image teachers without BatchNorm: on the zoo's two BatchNorm ResNets the clip cost
    their students 6 and 14 points (see :func:`cake_core.distill._contrast_within`).
    """
    if spec.training.range_contrast <= 1:
        return None, "training.range_contrast is 1: off"
    if spec.input_range is None:
        return None, "no input_range in the spec"
    if not spec.training.relabel:
        return None, "training.relabel is off"
    if len(input_shape) != 3:
        return None, "the teacher's input is not an image"
    if tap_batchnorm(teacher) is not None:
        return None, "the teacher has BatchNorm layers"
    low, high = spec.input_range
    return (low, high), f"contrast up to {spec.training.range_contrast:g}, clipped to input_range"


def _synthesize_all(
    teacher: torch.jit.ScriptModule,
    spec: JobSpec,
    info: TeacherInfo,
    runtime: Runtime,
    report: _Reporter,
    stop: Callable[[], bool],
    checkpoints: CheckpointStore | None,
) -> tuple[SyntheticSet, list[dict[str, float]], float]:
    """Collect every chunk, reusing chunks a previous attempt already checkpointed."""
    plan = plan_synthesis(spec.synthesis, info.input_shape, runtime)
    chunks: list[SyntheticChunk | dict[str, Any]] = []
    seconds = 0.0
    if checkpoints is not None:
        while (saved := checkpoints.load(f"synthesis/{len(chunks):06d}")) is not None:
            chunks.append(saved)
            seconds += float(saved["seconds"])
    log = [dict(c["log"]) for c in chunks if isinstance(c, dict)]
    report("synthesizing", len(chunks) / plan.num_chunks, f"synthesizing {plan.num_chunks} chunks")
    chunk_started = time.perf_counter()
    for chunk in synthesize(
        teacher,
        spec.synthesis,
        info.input_shape,
        info.num_classes,
        seed=spec.seed,
        runtime=runtime,
        start_chunk=len(chunks),
        should_stop=stop,
    ):
        elapsed = time.perf_counter() - chunk_started
        seconds += elapsed
        entry = {
            "chunk": float(chunk.index),
            "first_batch": float(chunk.first_batch),
            "step_size": float(chunk.step_sizes[0]),
            "target_accuracy": chunk.target_accuracy,
            "seconds": elapsed,
            **{f"loss_{k}": v for k, v in chunk.losses.items()},
        }
        log.append(entry)
        if checkpoints is not None:
            checkpoints.save(
                f"synthesis/{chunk.index:06d}",
                {"x": chunk.x, "labels": chunk.labels, "seconds": elapsed, "log": entry},
            )
        chunks.append(chunk)
        report(
            "synthesizing",
            (chunk.index + 1) / plan.num_chunks,
            f"chunk {chunk.index + 1}/{plan.num_chunks}: loss {chunk.losses['total']:.3g}, "
            f"on target {chunk.target_accuracy:.2f}",
            entry,
        )
        chunk_started = time.perf_counter()
    xs = [c["x"] if isinstance(c, dict) else c.x for c in chunks]
    labels = [c["labels"] if isinstance(c, dict) else c.labels for c in chunks]
    return SyntheticSet(torch.cat(xs), torch.cat(labels)), log, seconds
