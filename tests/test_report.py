"""``curves.png`` and ``report.md``: written by every job, complete after resumed attempts."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from cake_core.device import default_runtime
from cake_core.errors import JobCanceled
from cake_core.pipeline import DirectoryCheckpoints, Progress, run_job
from cake_core.report import (
    curve_series,
    format_metric,
    relink_report,
    write_curves,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Wine (13 features, 3 classes): one mini-batch of 99 per chunk, so 4 chunks, and 4 epochs.
TINY = {
    "preset": "fast",
    "synthesis": {"num_samples": 396, "batch_size": 99, "steps": 10, "chunk_batches": 1},
    "training": {"epochs": 4},
}
CHUNKS, EPOCHS = 4, 4


def _check_png(path, min_bytes: int = 5_000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert min_bytes < len(data) < 2_000_000, len(data)
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def test_resumed_job_reports_every_chunk_and_epoch(wine_teacher, tmp_path):
    """Stopped once during synthesis and once during training, the third attempt still draws
    and reports the curves of all chunks and epochs, with the values the earlier attempts
    measured (they come back from the checkpoints)."""
    runtime = default_runtime("cpu")
    store = DirectoryCheckpoints(tmp_path / "ckpt")
    seen: list[Progress] = []

    def attempt(out: str, stop_when) -> object:
        return run_job(
            wine_teacher.path,
            wine_teacher.input_shape,
            TINY,
            tmp_path / out,
            eval_path=wine_teacher.eval_path,
            runtime=runtime,
            checkpoints=store,
            on_progress=seen.append,
            should_cancel=stop_when,
        )

    def chunks_done() -> int:
        return sum(1 for p in seen if p.phase == "synthesizing" and "chunk" in p.metrics)

    def epochs_done() -> int:
        return sum(1 for p in seen if p.phase == "training" and "epoch" in p.metrics)

    with pytest.raises(JobCanceled):
        attempt("a", lambda: chunks_done() >= 2)
    assert chunks_done() == 2 and epochs_done() == 0
    with pytest.raises(JobCanceled):
        attempt("b", lambda: epochs_done() >= 2)
    first_chunks = [p.metrics for p in seen if "chunk" in p.metrics]
    first_epochs = [p.metrics for p in seen if "epoch" in p.metrics]
    assert [int(m["chunk"]) for m in first_chunks] == [0, 1, 2, 3]
    assert [int(m["epoch"]) for m in first_epochs] == [1, 2]
    seen.clear()
    result = attempt("c", lambda: False)
    assert [int(p.metrics["epoch"]) for p in seen if "epoch" in p.metrics] == [3, 4]
    assert not [p for p in seen if "chunk" in p.metrics], "synthesis came from checkpoints"

    out = tmp_path / "c"
    assert {"curves.png", "report.md"} <= set(result.artifacts)
    assert result.artifacts["curves.png"] == out / "curves.png"
    assert "samples.png" not in result.artifacts  # tabular input: no sample grid
    width, height = _check_png(out / "curves.png")
    assert width > 2 * height >= 400

    # The curves' data: every chunk and epoch, the early ones as the first attempts measured.
    manifest = json.loads((out / "manifest.json").read_text())
    series = curve_series(manifest["history"], manifest["synthesis"])
    assert [x for x, _ in series["loss"]] == [1.0, 2.0, 3.0, 4.0]
    assert [x for x, _ in series["agreement_synthetic"]] == [1.0, 2.0, 3.0, 4.0]
    assert [x for x, _ in series["synthesis_total"]] == [1.0, 2.0, 3.0, 4.0]
    assert series["loss"][0][1] == pytest.approx(first_epochs[0]["loss"])
    assert series["synthesis_total"][0][1] == pytest.approx(first_chunks[0]["loss_total"])
    assert len(result.history) == EPOCHS and len(result.synthesis_log) == CHUNKS

    report = (out / "report.md").read_text()
    for key, value in result.metrics.items():
        row = f"| `{key}` | {format_metric(key, value)} |"
        assert row in report, (row, report)
    m = result.metrics
    assert f"**{m['student_accuracy']:.4f}** accuracy" in report
    assert f"teacher's {m['teacher_accuracy']:.4f} (ratio {m['accuracy_ratio']:.4f})" in report
    assert f"- Training: {EPOCHS} epochs; loss {first_epochs[0]['loss']:.4g} → " in report
    assert f"- Synthesis: {CHUNKS} chunks;" in report
    assert "![curves](curves.png)" in report and "samples.png" not in report
    for phase in ("synthesis", "training", "evaluation", "export", "total"):
        assert re.search(rf"^\| {phase} \| \d+\.\d\d \|", report, re.M), phase
    spec_block = report.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(spec_block) == result.spec.to_dict()
    assert result.teacher.sha256[:12] in report


def test_report_links_images_and_follows_renames(tmp_path):
    manifest = {
        "teacher": {"sha256": "ab" * 32, "num_classes": 10},
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "spec": {"seed": 0},
        "metrics": {"student_parameters": 1234.0, "agreement_synthetic": float("nan")},
        "student": {"arch": "lenet5", "width": 0.5, "sha256": "cd" * 32, "size_bytes": 10},
        "history": [],
        "synthesis": [],
    }
    path = tmp_path / "report.md"
    text = write_report(
        path, manifest, {"training": 1.0, "total": 2.0}, ["curves.png", "samples.png"]
    )
    assert "![curves](curves.png)" in text and "![samples](samples.png)" in text
    assert "| `student_parameters` | 1,234 |" in text
    assert "| `agreement_synthetic` | n/a |" in text
    assert "- Training: 0 epochs" in text
    relink_report(path, {"curves.png": "student.curves.png", "samples.png": "student.samples.png"})
    text = path.read_text()
    assert "![curves](student.curves.png)" in text and "![samples](student.samples.png)" in text


def test_curves_without_data_still_draw(tmp_path):
    """A job with no holdout (agreement NaN) and a non-finite synthesis term still gets a PNG,
    with the missing points left out rather than drawn."""
    history = [{"epoch": 1.0, "loss": 0.5, "agreement_synthetic": float("nan")}]
    log = [{"chunk": 0.0, "loss_total": 3.0, "loss_cls": float("inf")}]
    series = write_curves(tmp_path / "c.png", history, log)
    _check_png(tmp_path / "c.png", min_bytes=1_000)
    assert series["loss"] == [(1.0, 0.5)]
    assert series["agreement_synthetic"] == []
    assert series["synthesis_total"] == [(1.0, 3.0)]
    assert "synthesis_cls" not in series
    write_curves(tmp_path / "empty.png", [], [])
    _check_png(tmp_path / "empty.png", min_bytes=1_000)
