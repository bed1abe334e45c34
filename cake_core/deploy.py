"""Deployment artifacts of a finished job: ``student.onnx``, ``student.int8.onnx`` and a table.

Users run students on phones, edge boxes and inference servers, where ONNX Runtime is often the
runtime at hand and TorchScript is not. Every succeeded job therefore also gets

* ``student.onnx``: the trained student exported with torch's TorchScript-based exporter
  (:func:`export_onnx`; fast, and needs nothing beyond torch and onnx), opset
  :data:`ONNX_OPSET`, a dynamic batch dimension, input ``input`` and output ``logits``, one file
  without external data. It is stored only after :func:`check_onnx` found that ONNX Runtime's CPU
  provider predicts the same class as the saved ``student.pt`` on every checked held-out
  synthetic sample: a file nobody has run is not an artifact.
* ``student.int8.onnx``: post-training static quantization of that model with ONNX Runtime's
  quantizer (:func:`quantize_int8`; QDQ format, per-channel weights where the quantizer manages
  them), calibrated on synthetic samples only (the job never sees real data). It is stored only
  when it keeps at least :data:`INT8_MIN_RATIO` of the fp32 model's agreement with the teacher
  (:func:`int8_decision`): an int8 file that quietly lost accuracy would be worse than none.
* a deployment table (:func:`deployment_table`): per artifact and runtime its size, parameters,
  CPU latency at batch 1 and 64 and agreement with the teacher, all measured in this process on
  the CPU (where these artifacts are deployed), TorchScript and ONNX Runtime side by side with the
  same thread count.

A student that cannot be exported, fails the check or cannot be quantized loses that artifact
only, never the job: :func:`build_deployment` turns every such failure into a ``warning`` event
and a manifest entry that says why.

No web, queue or database import here: the engine stays usable from the CLI alone.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CALIBRATION_SAMPLES",
    "CHECK_SAMPLES",
    "INPUT_NAME",
    "INT8_MIN_RATIO",
    "LATENCY_BATCH_SIZES",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "Deployment",
    "DeploymentError",
    "Int8Decision",
    "Latency",
    "OnnxCheck",
    "agreement",
    "build_deployment",
    "check_onnx",
    "deployment_table",
    "export_onnx",
    "int8_decision",
    "measure_latency",
    "onnx_logits",
    "ort_session",
    "quantize_int8",
    "skipped_deployment",
    "torchscript_logits",
]

ONNX_OPSET = 17
"""Pinned so the same student gives the same graph whatever torch's default becomes; 17 is
supported by every ONNX Runtime release of the last years (1.14+) and has LayerNormalization."""
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INT8_MIN_RATIO = 0.99
"""``student.int8.onnx`` is kept only when its agreement with the teacher is at least this share
of the fp32 ONNX model's."""
CALIBRATION_SAMPLES = 256
"""Synthetic training samples the int8 calibration sees: enough for stable min/max ranges of a
small student, few enough to cost well under a second."""
CHECK_SAMPLES = 2048
"""At most this many held-out synthetic samples are used for the check and the agreements, so a
job with a huge hold-out does not spend minutes here."""
LATENCY_BATCH_SIZES = (1, 64)
LATENCY_BUDGET_S = 0.3
"""Time one latency cell may take (after its warm-up), within MIN..MAX repeats."""
LATENCY_MIN_REPEATS = 3
LATENCY_MAX_REPEATS = 50
_EVAL_BATCH = 256


class DeploymentError(RuntimeError):
    """An artifact could not be built or failed its check; the job goes on without it."""


# -- running the models ---------------------------------------------------------------------------
def ort_session(path: str | Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads.

    Thread spinning is off: the session shares the process (and the latency measurement) with
    torch's own thread pool, and spinning ORT threads would steal the cores torch measures on.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no per-session chatter in the job's log
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, x: torch.Tensor, batch_size: int = _EVAL_BATCH) -> np.ndarray:
    """The session's logits for ``x`` (float32, CPU), in batches."""
    data = x.detach().cpu().float().contiguous().numpy()
    outs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: data[i : i + batch_size]})[0]
        for i in range(0, len(data), batch_size)
    ]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def torchscript_logits(
    module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = _EVAL_BATCH
) -> np.ndarray:
    """A TorchScript (or eager) module's logits for ``x`` on the CPU, in batches."""
    data = x.detach().cpu().float()
    outs = []
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            outs.append(module(data[i : i + batch_size]).float().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def agreement(logits: np.ndarray, reference_classes: np.ndarray) -> float:
    """Share of samples whose top-1 class is the reference's (NaN for no samples)."""
    if len(reference_classes) == 0:
        return float("nan")
    return float(np.mean(logits.argmax(axis=1) == reference_classes))


# -- student.onnx ---------------------------------------------------------------------------------
def export_onnx(
    student: nn.Module, path: str | Path, input_shape: Sequence[int], *, opset: int = ONNX_OPSET
) -> None:
    """Export the (CPU, eval-mode) student to one ONNX file with a dynamic batch dimension.

    torch's TorchScript-based exporter (``dynamo=False``): it exports every registry student in
    well under a second, where the dynamo exporter takes seconds and needs onnxscript. Its
    deprecation warnings are silenced here only. The file is checked with ONNX's checker and
    must hold its weights inline: one file is what a user downloads and deploys.

    Raises:
        DeploymentError: the exporter or the checker refused; no file is left at ``path``.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = Path(path)
    student = student.cpu().eval()
    dummy = torch.zeros((2, *input_shape))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                student,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
        if any(uses_external_data(t) for t in model.graph.initializer):
            raise DeploymentError("the exporter wrote the weights to a separate file")
    except Exception as exc:
        path.unlink(missing_ok=True)
        for extra in path.parent.glob(f"{path.name}*.data"):
            extra.unlink(missing_ok=True)
        if isinstance(exc, DeploymentError):
            raise
        raise DeploymentError(f"ONNX export failed: {_short(exc)}") from exc


@dataclass
class OnnxCheck:
    """ONNX Runtime against the saved TorchScript student on the same inputs."""

    samples: int
    top1_agreement: float
    max_abs_logit_diff: float

    @property
    def passed(self) -> bool:
        """Every sample gets the same class (NaN, i.e. no samples, never passes)."""
        return self.samples > 0 and self.top1_agreement == 1.0


def check_onnx(session: Any, torchscript: Any, x: torch.Tensor) -> OnnxCheck:
    """Run both models on ``x``; the ONNX file is only as good as this comparison.

    The reference is ``student.pt`` as saved (reloaded from disk), not the in-memory student:
    the two artifacts a user downloads are what must agree.
    """
    got = onnx_logits(session, x)
    expected = torchscript_logits(torchscript, x)
    if got.shape != expected.shape:
        raise DeploymentError(
            f"ONNX Runtime returned logits of shape {list(got.shape)}, "
            f"student.pt {list(expected.shape)}"
        )
    if len(x) == 0:
        return OnnxCheck(0, float("nan"), float("nan"))
    return OnnxCheck(
        samples=len(x),
        top1_agreement=agreement(got, expected.argmax(axis=1)),
        max_abs_logit_diff=float(np.max(np.abs(got - expected))),
    )


# -- student.int8.onnx ----------------------------------------------------------------------------
class _Calibration:
    """ONNX Runtime's calibration reader over synthetic samples, a batch at a time."""

    def __init__(self, x: torch.Tensor, batch_size: int = 32) -> None:
        data = x.detach().cpu().float().contiguous().numpy()
        self._batches: Iterator[np.ndarray] = iter(
            [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration_x: torch.Tensor) -> bool:
    """Static int8 quantization (QDQ, MinMax calibration on ``calibration_x``); returns whether
    the weights were quantized per channel.

    The model first goes through ``quant_pre_process`` (shape inference and graph
    optimisation, which the quantizer wants); a model it cannot handle is quantized as
    exported. Per-channel weights keep far more accuracy on small convolutions; where the
    quantizer fails with them it is retried per tensor.

    Raises:
        DeploymentError: the quantizer failed both ways; no file is left at ``out_path``.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    out_path = Path(out_path)
    errors = []
    with tempfile.TemporaryDirectory(prefix="cake-int8-", dir=out_path.parent) as tmp:
        source = Path(fp32_path)
        prepared = Path(tmp) / "prepared.onnx"
        try:
            with _quiet():
                quant_pre_process(str(source), str(prepared))
            source = prepared
        except Exception:  # the quantizer also works on the exported graph, a bit less well
            pass
        for per_channel in (True, False):
            try:
                with _quiet():
                    quantize_static(
                        str(source),
                        str(out_path),
                        Reader(calibration_x),
                        quant_format=QuantFormat.QDQ,
                        per_channel=per_channel,
                    )
                return per_channel
            except Exception as exc:
                out_path.unlink(missing_ok=True)
                errors.append(f"{'per-channel' if per_channel else 'per-tensor'}: {_short(exc)}")
    raise DeploymentError("int8 quantization failed (" + "; ".join(errors) + ")")


@dataclass
class Int8Decision:
    """Whether ``student.int8.onnx`` is kept, by the agreement rule."""

    kept: bool
    ratio: float | None
    reason: str


def int8_decision(
    agreement_fp32: float, agreement_int8: float, min_ratio: float = INT8_MIN_RATIO
) -> Int8Decision:
    """Keep the int8 model when ``agreement_int8 / agreement_fp32 >= min_ratio``.

    Both agreements are with the teacher on the same held-out synthetic samples. An fp32 model
    that never agrees with the teacher gives no ratio to judge by, and its int8 copy is refused.
    """
    if not (math.isfinite(agreement_fp32) and math.isfinite(agreement_int8)):
        return Int8Decision(False, None, "no held-out samples to compare the int8 model on")
    if agreement_fp32 <= 0:
        return Int8Decision(
            False, None, "the fp32 model never agrees with the teacher: no ratio to judge by"
        )
    ratio = agreement_int8 / agreement_fp32
    words = (
        f"int8 agreement with the teacher {agreement_int8:.4f} is {ratio:.4f} of the fp32 "
        f"model's {agreement_fp32:.4f}"
    )
    if ratio >= min_ratio:
        return Int8Decision(True, ratio, f"{words}, at least the {min_ratio:g} required")
    return Int8Decision(False, ratio, f"{words}, below the {min_ratio:g} required")


# -- latency --------------------------------------------------------------------------------------
@dataclass
class Latency:
    """Median wall time of one call, in milliseconds, over ``repeats`` timed calls."""

    median_ms: float
    repeats: int


def measure_latency(
    call: Callable[[], Any],
    *,
    budget_s: float = LATENCY_BUDGET_S,
    min_repeats: int = LATENCY_MIN_REPEATS,
    max_repeats: int = LATENCY_MAX_REPEATS,
) -> Latency:
    """One warm-up call (allocations, lazy initialisation, TorchScript's profiling run), then
    timed calls until ``budget_s`` is spent (at least ``min_repeats``, at most ``max_repeats``).

    The median, not the mean: one call delayed by another process says nothing about the model.
    """
    call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats and (
        len(times) < min_repeats or time.perf_counter() - started < budget_s
    ):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return Latency(statistics.median(times) * 1000.0, len(times))


@dataclass
class _Candidate:
    """One (artifact, runtime) row before it is measured."""

    artifact: str
    role: str
    format: str
    runtime: str
    size_bytes: int
    parameters: int
    agreement_teacher: float | None
    run: Callable[[torch.Tensor], Any]


def deployment_table(
    candidates: Sequence[_Candidate],
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = LATENCY_BATCH_SIZES,
    budget_s: float = LATENCY_BUDGET_S,
) -> list[dict[str, Any]]:
    """Measure each row's CPU latency at each batch size and return the manifest's table.

    All rows are measured in this one call, one after the other, with the thread count the
    process has (ONNX Runtime sessions are built with the same), on the same random inputs, so
    the numbers compare. ``repeats`` is the smallest number of timed calls behind any of the row's
    cells.
    """
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn((b, *input_shape), generator=generator) for b in batch_sizes}
    rows = []
    for c in candidates:
        latencies = {
            b: measure_latency(lambda run=c.run, x=inputs[b]: run(x), budget_s=budget_s)
            for b in batch_sizes
        }
        row: dict[str, Any] = {
            "artifact": c.artifact,
            "role": c.role,
            "format": c.format,
            "runtime": c.runtime,
            "size_bytes": c.size_bytes,
            "parameters": c.parameters,
        }
        row.update({f"latency_ms_batch_{b}": latencies[b].median_ms for b in batch_sizes})
        row["agreement_teacher"] = c.agreement_teacher
        row["repeats"] = min(lat.repeats for lat in latencies.values())
        rows.append(row)
    return rows


# -- the whole step -------------------------------------------------------------------------------
@dataclass
class Deployment:
    """What :func:`build_deployment` made: the manifest section, the files it kept, the events
    to log (``(message, level, data)``), the metrics to add and the seconds each part took."""

    section: dict[str, Any]
    artifacts: dict[str, Path]
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Artifact:
    """One ONNX artifact after its check: its manifest entry, its session when it is kept (None
    otherwise), its agreement with the teacher (NaN when not measured) and the event to log."""

    info: dict[str, Any]
    session: Any | None
    agreement: float
    event: tuple[str, str, dict[str, Any]]
    seconds: float


def _onnx_artifact(
    student: nn.Module,
    scripted: Any,
    path: Path,
    input_shape: Sequence[int],
    check_x: torch.Tensor,
    teacher_classes: np.ndarray,
    *,
    threads: int,
    opset: int,
    check_name: str,
) -> _Artifact:
    """Export ``student.onnx`` and keep it only when ONNX Runtime gives ``student.pt``'s class
    on every sample of ``check_x``."""
    started = time.perf_counter()
    info: dict[str, Any] = {
        "kept": False,
        "opset": opset,
        "samples": len(check_x),
        "top1_agreement": None,
        "max_abs_logit_diff": None,
        "reason": "",
    }
    try:
        export_onnx(student, path, input_shape, opset=opset)
        session = ort_session(path, threads)
        check = check_onnx(session, scripted, check_x)
        info["top1_agreement"] = _finite(check.top1_agreement)
        info["max_abs_logit_diff"] = _finite(check.max_abs_logit_diff)
        if not check.passed:
            raise DeploymentError(
                f"ONNX Runtime and student.pt disagree: top-1 agreement "
                f"{check.top1_agreement:.4f} on {check.samples} {check_name} "
                f"(max |logit difference| {check.max_abs_logit_diff:.3g})"
            )
        info["kept"] = True
        info["reason"] = (
            f"ONNX Runtime (CPU) predicts the class student.pt predicts on all {check.samples} "
            f"{check_name}; max |logit difference| {check.max_abs_logit_diff:.3g}"
        )
        fp32 = agreement(onnx_logits(session, check_x), teacher_classes)
        event = (f"student.onnx (opset {opset}): {info['reason']}", "info", _event(info))
        return _Artifact(info, session, fp32, event, time.perf_counter() - started)
    except Exception as exc:  # an artifact's failure, never the job's
        path.unlink(missing_ok=True)
        info["reason"] = _short(exc)
        message = f"no student.onnx: {info['reason']}; the job's other artifacts are unaffected"
        event = (message, "warning", _event(info))
        return _Artifact(info, None, float("nan"), event, time.perf_counter() - started)


def _int8_artifact(
    fp32: _Artifact,
    fp32_path: Path,
    path: Path,
    calibration_x: torch.Tensor,
    check_x: torch.Tensor,
    teacher_classes: np.ndarray,
    *,
    threads: int,
    min_ratio: float,
) -> _Artifact:
    """Quantize the kept ``student.onnx`` and keep the result only by :func:`int8_decision`."""
    started = time.perf_counter()
    info: dict[str, Any] = {
        "kept": False,
        "format": "QDQ",
        "calibration_samples": len(calibration_x),
        "agreement_fp32": _finite(fp32.agreement),
        "agreement_int8": None,
        "ratio": None,
        "min_ratio": min_ratio,
        "per_channel": None,
        "reason": "no student.onnx to quantize",
    }
    if fp32.session is None:
        event = ("no student.int8.onnx: no student.onnx to quantize", "info", _event(info))
        return _Artifact(info, None, float("nan"), event, 0.0)
    try:
        info["per_channel"] = quantize_int8(fp32_path, path, calibration_x)
        session = ort_session(path, threads)
        int8 = agreement(onnx_logits(session, check_x), teacher_classes)
        decision = int8_decision(fp32.agreement, int8, min_ratio)
        info.update(
            agreement_int8=_finite(int8),
            ratio=decision.ratio,
            kept=decision.kept,
            reason=decision.reason,
        )
        if not decision.kept:
            path.unlink(missing_ok=True)
            event = (f"student.int8.onnx not kept: {decision.reason}", "info", _event(info))
            return _Artifact(info, None, int8, event, time.perf_counter() - started)
        event = (f"student.int8.onnx kept: {decision.reason}", "info", _event(info))
        return _Artifact(info, session, int8, event, time.perf_counter() - started)
    except Exception as exc:  # an artifact's failure, never the job's
        path.unlink(missing_ok=True)
        info["reason"] = _short(exc)
        event = (f"no student.int8.onnx: {info['reason']}", "warning", _event(info))
        return _Artifact(info, None, float("nan"), event, time.perf_counter() - started)


def build_deployment(
    student: nn.Module,
    student_pt: str | Path,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    teacher_path: str | Path,
    teacher_parameters: int,
    input_shape: Sequence[int],
    check_x: torch.Tensor,
    calibration_x: torch.Tensor,
    out_dir: str | Path,
    *,
    min_ratio: float = INT8_MIN_RATIO,
    opset: int = ONNX_OPSET,
    latency_budget_s: float = LATENCY_BUDGET_S,
    check_name: str = "held-out synthetic samples",
) -> Deployment:
    """Export, check, quantize and measure; never raises for an artifact that fails.

    ``teacher`` must run on the CPU (its latency is measured and its classes on ``check_x`` are
    the reference every agreement is measured against). ``check_x``: held-out synthetic samples
    (at most :data:`CHECK_SAMPLES` are used); ``calibration_x``: synthetic training samples (at
    most :data:`CALIBRATION_SAMPLES`); ``check_name`` says in the messages what ``check_x`` is.
    Every student row's ``parameters`` is the student's parameter count: the same model in
    another file format (the ONNX exporter may fold a BatchNorm into its convolution, int8 stores
    the same weights in fewer bytes).
    """
    out, student_pt = Path(out_dir), Path(student_pt)
    threads = max(1, torch.get_num_threads())
    check_x = check_x.detach().cpu().float()[:CHECK_SAMPLES]
    calibration_x = calibration_x.detach().cpu().float()[:CALIBRATION_SAMPLES]
    student = student.cpu().eval()
    parameters = int(sum(p.numel() for p in student.parameters()))
    started = time.perf_counter()
    teacher_classes = torchscript_logits(teacher, check_x).argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(student_pt), map_location="cpu").eval()
    pt_agreement = agreement(torchscript_logits(scripted, check_x), teacher_classes)
    reference_seconds = time.perf_counter() - started

    onnx_path, int8_path = out / "student.onnx", out / "student.int8.onnx"
    fp32 = _onnx_artifact(
        student, scripted, onnx_path, input_shape, check_x, teacher_classes,
        threads=threads, opset=opset, check_name=check_name,
    )  # fmt: skip
    int8 = _int8_artifact(
        fp32, onnx_path, int8_path, calibration_x, check_x, teacher_classes,
        threads=threads, min_ratio=min_ratio,
    )  # fmt: skip

    candidates = [
        _Candidate(
            "teacher.pt", "teacher", "torchscript", "torchscript",
            Path(teacher_path).stat().st_size, int(teacher_parameters), 1.0,
            lambda x: _no_grad(teacher, x),
        ),
        _Candidate(
            "student.pt", "student", "torchscript", "torchscript",
            student_pt.stat().st_size, parameters, _finite(pt_agreement),
            lambda x: _no_grad(scripted, x),
        ),
    ]  # fmt: skip
    for name, kind, artifact, path in (
        ("student.onnx", "onnx", fp32, onnx_path),
        ("student.int8.onnx", "onnx-int8", int8, int8_path),
    ):
        if artifact.session is not None:
            candidates.append(
                _Candidate(
                    name, "student", kind, "onnxruntime", path.stat().st_size, parameters,
                    _finite(artifact.agreement), _ort_call(artifact.session),
                )
            )  # fmt: skip
    started = time.perf_counter()
    with _threads(threads):
        table = deployment_table(candidates, input_shape, budget_s=latency_budget_s)
    latency_seconds = time.perf_counter() - started

    return Deployment(
        section={
            "onnx": fp32.info,
            "int8": int8.info,
            "latency": {
                "device": "cpu",
                "threads": threads,
                "batch_sizes": list(LATENCY_BATCH_SIZES),
                "statistic": "median",
            },
            "table": table,
        },
        artifacts={
            name: path
            for name, artifact, path in (
                ("student.onnx", fp32, onnx_path),
                ("student.int8.onnx", int8, int8_path),
            )
            if artifact.session is not None
        },
        events=[fp32.event, int8.event],
        metrics={
            "onnx_max_abs_logit_diff": fp32.info["max_abs_logit_diff"]
            if fp32.info["max_abs_logit_diff"] is not None
            else float("nan"),
            "int8_kept": 1.0 if int8.info["kept"] else 0.0,
        },
        seconds={
            "reference": reference_seconds,
            "onnx": fp32.seconds,
            "int8": int8.seconds,
            "latency": latency_seconds,
        },
    )


def skipped_deployment(
    reason: str, out_dir: str | Path, *, min_ratio: float = INT8_MIN_RATIO
) -> Deployment:
    """The manifest section of a job whose deployment step failed as a whole (e.g. its teacher
    does not run on the CPU): nothing kept, an empty table, ``reason`` everywhere, and no file
    of this step left behind."""
    for name in ("student.onnx", "student.int8.onnx"):
        (Path(out_dir) / name).unlink(missing_ok=True)
    section = {
        "onnx": {
            "kept": False,
            "opset": ONNX_OPSET,
            "samples": 0,
            "top1_agreement": None,
            "max_abs_logit_diff": None,
            "reason": reason,
        },
        "int8": {
            "kept": False,
            "format": "QDQ",
            "calibration_samples": 0,
            "agreement_fp32": None,
            "agreement_int8": None,
            "ratio": None,
            "min_ratio": min_ratio,
            "per_channel": None,
            "reason": reason,
        },
        "latency": {
            "device": "cpu",
            "threads": max(1, torch.get_num_threads()),
            "batch_sizes": list(LATENCY_BATCH_SIZES),
            "statistic": "median",
        },
        "table": [],
    }
    metrics = {"onnx_max_abs_logit_diff": float("nan"), "int8_kept": 0.0}
    event = f"no student.onnx, no student.int8.onnx, no deployment table: {reason}"
    return Deployment(section, {}, [(event, "warning", {"reason": reason})], metrics)


# -- helpers --------------------------------------------------------------------------------------
def _no_grad(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _ort_call(session: Any) -> Callable[[torch.Tensor], Any]:
    def run(x: torch.Tensor) -> Any:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})

    return run


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block (as the sessions have)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer warns and logs per node; none of it is for the job's user."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _event(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "reason"}


def _short(exc: BaseException, limit: int = 300) -> str:
    """One line of an exception for a user: its type when the message is empty, cut at
    ``limit`` characters (the exporter's messages can hold whole graphs)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, DeploymentError):
        return text[:limit]
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
