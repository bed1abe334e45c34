"""Human-readable artifacts of a finished job: ``curves.png`` and ``report.md``.

``curves.png`` shows how the job went: the student's training loss and its agreement with the
teacher per epoch, and the synthesis loss per chunk. ``report.md`` gathers what a user wants to
read about one job on one page: the metrics, the time each phase took, the spec (as JSON, so it
can be resubmitted), and the two images as relative links, so it renders next to the other
artifacts (the service stores them side by side; ``cake distill`` relinks them, see
:func:`relink_report`).

Both are drawn from the history the pipeline keeps in its checkpoints (per-epoch metrics in the
training state, the per-chunk synthesis log with each chunk), so a job resumed after an
interruption still gets complete curves.

matplotlib is imported inside :func:`write_curves` only, with the Agg backend (no display):
importing this module costs nothing, and the API process never imports it at all.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Series = list[tuple[float, float]]

#: Meaning of each metric ``run_job`` returns, in the order the report lists them.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "teacher_accuracy": "teacher accuracy on the evaluation data",
    "student_accuracy": "student accuracy on the evaluation data",
    "accuracy_ratio": "student accuracy / teacher accuracy",
    "agreement_eval": "student predicts the teacher's class, on the evaluation data",
    "agreement_synthetic": "student predicts the teacher's class, on held-out synthetic samples",
    "fidelity_estimate": "data-free estimate of the agreement on real data (held-out synthetic "
    "samples the teacher is confident about)",
    "fidelity_estimate_samples": "held-out synthetic samples behind the estimate",
    "batchnorm_layers": "teacher BatchNorm layers the synthesis prior matched",
    "teacher_parameters": "teacher parameters",
    "student_parameters": "student parameters",
    "compression": "teacher parameters / student parameters (above 1: the student is smaller)",
    "num_samples": "synthetic samples",
    "samples_per_second": "synthesis speed (samples per second)",
    "synthesis_seconds": "synthesis time (s)",
    "training_seconds": "training time (s)",
    "total_seconds": "whole job (s)",
    "onnx_max_abs_logit_diff": "largest logit difference between student.onnx (ONNX Runtime) "
    "and student.pt on held-out synthetic samples",
    "int8_kept": "1 when student.int8.onnx kept its agreement with the teacher and was stored",
}
#: Loss terms of the synthesis log drawn besides the total (weighted, as in the spec).
_SYNTHESIS_TERMS = ("cls", "contr", "tv", "entropy", "bn")


def format_metric(key: str, value: float | None) -> str:
    """How the report (and anyone checking it) writes one metric's value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if key.endswith(("accuracy", "ratio")) or key.startswith("agreement"):
        return f"{value:.4f}"
    if key.endswith("parameters") or key == "num_samples":
        return f"{int(value):,}"
    if key.endswith("seconds"):
        return f"{value:.2f}"
    return f"{value:.4g}"


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(rows: Sequence[Mapping[str, Any]], x_key: str, y_key: str, x_offset: float) -> Series:
    points = []
    for row in rows:
        x, y = _finite(row.get(x_key)), _finite(row.get(y_key))
        if x is not None and y is not None:
            points.append((x + x_offset, y))
    return sorted(points)


def curve_series(
    history: Sequence[Mapping[str, Any]], synthesis_log: Sequence[Mapping[str, Any]]
) -> dict[str, Series]:
    """The points ``curves.png`` draws: ``(epoch, value)`` and ``(chunk number, value)``.

    Chunks are numbered from 1 like epochs. Non-finite values (no holdout, a diverged term)
    are left out rather than drawn as gaps or spikes.
    """
    series = {
        "loss": _series(history, "epoch", "loss", 0.0),
        "agreement_synthetic": _series(history, "epoch", "agreement_synthetic", 0.0),
        "synthesis_total": _series(synthesis_log, "chunk", "loss_total", 1.0),
    }
    for term in _SYNTHESIS_TERMS:
        points = _series(synthesis_log, "chunk", f"loss_{term}", 1.0)
        if points:
            series[f"synthesis_{term}"] = points
    return series


def write_curves(
    path: str | Path,
    history: Sequence[Mapping[str, Any]],
    synthesis_log: Sequence[Mapping[str, Any]],
    *,
    agreement_eval: float | None = None,
) -> dict[str, Series]:
    """Draw the three panels into a PNG at ``path``; return the series drawn.

    ``agreement_eval`` (the final agreement on real evaluation data, when the job had some)
    is drawn as a dashed line on the agreement panel for comparison.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # never a display, even where one is configured
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = curve_series(history, synthesis_log)
    # A Figure with its own Agg canvas: no pyplot, so no global figure state shared between
    # threads or jobs in a long-lived worker.
    fig = Figure(figsize=(13, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, agree_ax, synth_ax = fig.subplots(1, 3)

    _plot(loss_ax, series["loss"], "training loss", color="tab:blue")
    loss_ax.set(title="student training loss", xlabel="epoch", ylabel="distillation loss")
    _log_scale_if_positive(loss_ax, series["loss"])

    _plot(agree_ax, series["agreement_synthetic"], "held-out synthetic", color="tab:green")
    eval_value = _finite(agreement_eval)
    if eval_value is not None:
        agree_ax.axhline(eval_value, color="tab:red", ls="--", lw=1, label="real data (final)")
    agree_ax.set(title="agreement with the teacher", xlabel="epoch", ylabel="agreement")
    agree_ax.set_ylim(0.0, 1.02)
    if series["agreement_synthetic"] or eval_value is not None:
        agree_ax.legend(loc="lower right", fontsize="small")

    _plot(synth_ax, series["synthesis_total"], "total", color="black", lw=2)
    for term in _SYNTHESIS_TERMS:
        if f"synthesis_{term}" in series:
            _plot(synth_ax, series[f"synthesis_{term}"], term, lw=1, alpha=0.8)
    synth_ax.set(title="synthesis loss (last step)", xlabel="chunk", ylabel="weighted loss")
    _log_scale_if_positive(
        synth_ax, [p for k, v in series.items() if k.startswith("synthesis_") for p in v]
    )
    if series["synthesis_total"]:
        synth_ax.legend(fontsize="small")

    for ax in (loss_ax, agree_ax, synth_ax):
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    # No software/date metadata: the same history gives the same bytes.
    fig.savefig(str(path), format="png", metadata={"Software": None})
    return series


def _plot(ax: Any, points: Series, label: str, **style: Any) -> None:
    if not points:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, label=label, marker="o" if len(points) <= 12 else None, ms=3, **style)


def _log_scale_if_positive(ax: Any, points: Series) -> None:
    values = [y for _, y in points]
    if values and min(values) > 0 and max(values) / min(values) > 20:
        ax.set_yscale("log")


# -- report.md -----------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _trend(points: Series, fmt: str) -> str:
    if not points:
        return "none recorded"
    first, last = points[0][1], points[-1][1]
    return f"{first:{fmt}} → {last:{fmt}}"


def write_report(
    path: str | Path,
    manifest: Mapping[str, Any],
    timings: Mapping[str, float],
    images: Sequence[str] = (),
) -> str:
    """Write ``report.md`` for a job from its manifest; return the text.

    ``timings``: seconds per phase (``synthesis``, ``training``, ``evaluation``, ``export``,
    ``deployment``, and ``total``). ``images``: the image artifacts written next to the report
    (``curves.png``, ``samples.png``), linked relatively.
    """
    metrics: Mapping[str, float] = manifest.get("metrics", {})
    teacher: Mapping[str, Any] = manifest.get("teacher", {})
    student: Mapping[str, Any] = manifest.get("student", {})
    history = manifest.get("history", [])
    synthesis_log = manifest.get("synthesis", [])
    series = curve_series(history, synthesis_log)
    shape = manifest.get("input_shape", teacher.get("input_shape", []))

    lines = ["# Distillation report", ""]
    t_params, s_params = (
        _finite(metrics.get("teacher_parameters")),
        _finite(metrics.get("student_parameters")),
    )
    smaller = ""
    if t_params and s_params:
        factor = t_params / s_params
        smaller = (
            f", {factor:.1f}x fewer parameters"
            if factor >= 1
            else f", {1 / factor:.1f}x more parameters than the teacher"
        )
    lines += [
        f"Teacher `{str(teacher.get('sha256', ''))[:12]}` (input shape {list(shape)}, "
        f"{manifest.get('num_classes', teacher.get('num_classes', '?'))} classes) distilled "
        f"into a `{student.get('arch', '?')}` student of width {student.get('width', '?')}"
        f"{smaller}, without any of the teacher's training data.",
        "",
    ]
    if "student_accuracy" in metrics and "teacher_accuracy" in metrics:
        lines += [
            f"On the evaluation data the student reaches "
            f"**{format_metric('student_accuracy', metrics['student_accuracy'])}** accuracy "
            f"against the teacher's "
            f"{format_metric('teacher_accuracy', metrics['teacher_accuracy'])} (ratio "
            f"{format_metric('accuracy_ratio', metrics.get('accuracy_ratio'))}).",
            "",
        ]

    lines += ["## Metrics", ""]
    ordered = [k for k in METRIC_DESCRIPTIONS if k in metrics]
    ordered += sorted(k for k in metrics if k not in METRIC_DESCRIPTIONS)
    lines += _table(
        ["metric", "value", "meaning"],
        [[f"`{k}`", format_metric(k, metrics[k]), METRIC_DESCRIPTIONS.get(k, "")] for k in ordered],
        "lrl",
    )

    lines += ["", "## Time per phase", ""]
    total = _finite(timings.get("total"))
    rows = []
    for phase, seconds in timings.items():
        share = f"{seconds / total:.0%}" if total and phase != "total" else ""
        rows.append([phase, f"{seconds:.2f}", share])
    lines += _table(["phase", "seconds", "share"], rows, "lrr")

    lines += ["", "## Curves", ""]
    if "curves.png" in images:
        lines += ["![curves](curves.png)", ""]
    lines += [
        f"- Training: {len(series['loss'])} epochs; loss "
        f"{_trend(series['loss'], '.4g')}; agreement with the teacher on held-out synthetic "
        f"samples {_trend(series['agreement_synthetic'], '.4f')}.",
        f"- Synthesis: {len(synthesis_log)} chunks; total loss at the last step "
        f"{_trend(series['synthesis_total'], '.4g')}.",
    ]
    if "samples.png" in images:
        lines += [
            "",
            "## Synthetic samples",
            "",
            "One column per class (the teacher's label), each sample scaled to its own range.",
            "",
            "![samples](samples.png)",
        ]

    lines += ["", "## Student", ""]
    lines += _table(
        ["", ""],
        [
            ["architecture", f"`{student.get('arch', '?')}`"],
            ["width", str(student.get("width", "?"))],
            *(
                [["width chosen", str(student["width_reason"])]]
                if student.get("width_reason")
                else []
            ),
            ["file", "`student.pt` (TorchScript: `torch.jit.load` runs it with torch alone)"],
            ["sha256", f"`{student.get('sha256', '')}`"],
            ["size (bytes)", f"{int(student.get('size_bytes', 0)):,}"],
        ],
        "ll",
    )
    lines += _deployment_lines(manifest.get("deployment"))
    lines += ["", "## Spec", "", "The resolved job spec (every field, after the preset):", ""]
    lines += ["```json", json.dumps(manifest.get("spec", {}), indent=2, sort_keys=True), "```"]
    versions = manifest.get("versions", {})
    if versions or manifest.get("device"):
        lines += ["", "## Environment", ""]
        env = [f"device `{manifest.get('device', '?')}`"]
        if manifest.get("attention_kernel", "default") != "default":
            env.append(f"attention kernel `{manifest['attention_kernel']}`")
        env += [f"{name} {version}" for name, version in sorted(versions.items())]
        lines += ["; ".join(env) + "."]
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text, encoding="utf-8")
    return text


def _deployment_lines(deployment: Mapping[str, Any] | None) -> list[str]:
    """The deployment table (one row per artifact and runtime) and what was kept and why."""
    if not deployment:
        return []
    latency: Mapping[str, Any] = deployment.get("latency", {})
    onnx: Mapping[str, Any] = deployment.get("onnx", {})
    int8: Mapping[str, Any] = deployment.get("int8", {})
    batches = [int(b) for b in latency.get("batch_sizes", [])]
    lines = ["", "## Deployment", ""]
    lines += [
        f"Measured on the {latency.get('device', 'cpu').upper()} with "
        f"{latency.get('threads', '?')} threads, TorchScript and ONNX Runtime side by side: "
        f"latency is the {latency.get('statistic', 'median')} of repeated runs after a warm-up; "
        f"agreement is with the teacher's top-1 class on the {onnx.get('samples', '?')} "
        "synthetic samples of the ONNX check (held out from training where the job holds any "
        "out).",
        "",
    ]
    rows = []
    for row in deployment.get("table", []):
        rows.append(
            [
                f"`{row.get('artifact', '?')}`",
                str(row.get("runtime", "?")),
                f"{int(row.get('size_bytes', 0)):,}",
                f"{int(row.get('parameters', 0)):,}",
                *(_ms(row.get(f"latency_ms_batch_{b}")) for b in batches),
                format_metric("agreement_teacher", row.get("agreement_teacher")),
            ]
        )
    if rows:
        header = ["artifact", "runtime", "size (bytes)", "parameters"]
        header += [f"batch {b} (ms)" for b in batches] + ["agreement with teacher"]
        lines += _table(header, rows, "llrr" + "r" * len(batches) + "r")
        lines += [""]
    lines += [
        f"- `student.onnx` (opset {onnx.get('opset', '?')}, ONNX Runtime): "
        f"{'kept' if onnx.get('kept') else 'not stored'}; {onnx.get('reason', '')}.",
        f"- `student.int8.onnx` ({int8.get('format', 'QDQ')}, calibrated on "
        f"{int8.get('calibration_samples', 0)} synthetic samples, minimum ratio "
        f"{int8.get('min_ratio', '?')}): {'kept' if int8.get('kept') else 'not stored'}; "
        f"{int8.get('reason', '')}.",
    ]
    return lines


def _ms(value: Any) -> str:
    number = _finite(value)
    if number is None:
        return "n/a"
    return f"{number:.3f}" if number < 10 else f"{number:.1f}"


_LINK = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")


def relink_report(path: str | Path, renames: Mapping[str, str]) -> None:
    """Point the report's image links at renamed files (``samples.png`` -> ``x.samples.png``).

    ``cake distill`` puts the artifacts beside the student with its stem as a prefix; the
    report's relative links must follow or they would not render.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    text = _LINK.sub(lambda m: m.group(1) + renames.get(m.group(2), m.group(2)) + m.group(3), text)
    path.write_text(text, encoding="utf-8")
