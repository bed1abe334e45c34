"""``student.onnx``, ``student.int8.onnx`` and the deployment table of every succeeded job.

Real exports, real ONNX Runtime sessions, real quantization: every architecture of the registry
goes through a tiny job, and its ONNX file must give ``student.pt``'s class on every held-out
synthetic sample (re-created from the job's checkpoints). The int8 rule is exercised both ways on
real quantized models, and a student the exporter cannot handle costs that artifact only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from cake_core.deploy import (
    INPUT_NAME,
    INT8_MIN_RATIO,
    LATENCY_MAX_REPEATS,
    LATENCY_MIN_REPEATS,
    ONNX_OPSET,
    OUTPUT_NAME,
    build_deployment,
    int8_decision,
    measure_latency,
)
from cake_core.device import default_runtime
from cake_core.distill import SyntheticSet
from cake_core.export import export_student
from cake_core.pipeline import DirectoryCheckpoints, Progress, run_job
from cake_core.students import build_student
from cake_core.students.registry import list_archs

HOLDOUT = 0.25
TINY = {
    "synthesis": {"num_samples": 160, "steps": 4, "chunk_batches": 1},
    "training": {"epochs": 1, "holdout_fraction": HOLDOUT},
}
TABLE_KEYS = {
    "artifact",
    "role",
    "format",
    "runtime",
    "size_bytes",
    "parameters",
    "latency_ms_batch_1",
    "latency_ms_batch_64",
    "agreement_teacher",
    "repeats",
}


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ort_classes(path: Path, x: torch.Tensor) -> np.ndarray:
    logits = _session(path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    return logits.argmax(axis=1)


def _torch_classes(path: Path, x: torch.Tensor) -> np.ndarray:
    module = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        return module(x).argmax(dim=1).numpy()


def _parameters(path: Path) -> int:
    return sum(p.numel() for p in torch.jit.load(str(path), map_location="cpu").parameters())


def _synthetic_set(folder: Path) -> SyntheticSet:
    """The job's synthetic samples, reloaded from its checkpointed chunks in order."""
    chunks = sorted(folder.glob("synthesis__*.pt"))
    assert chunks, "the job checkpointed no synthesis chunk"
    loaded = [torch.load(p, map_location="cpu", weights_only=True) for p in chunks]
    return SyntheticSet(
        torch.cat([c["x"] for c in loaded]), torch.cat([c["labels"] for c in loaded])
    )


@pytest.mark.parametrize("arch", [a.name for a in list_archs()])
def test_every_student_gets_a_checked_onnx_file_and_a_measured_table(
    digits_teacher, arch, tmp_path
):
    out, saved = tmp_path / "out", tmp_path / "checkpoints"
    events: list[Progress] = []
    result = run_job(
        digits_teacher.path,
        digits_teacher.input_shape,
        {**TINY, "student": {"arch": arch, "width": 0.125}},
        out,
        runtime=default_runtime("cpu"),
        on_progress=events.append,
        checkpoints=DirectoryCheckpoints(saved),
    )
    manifest = json.loads((out / "manifest.json").read_text())
    deployment = manifest["deployment"]

    # student.onnx: one file, pinned opset, dynamic batch, the documented names.
    assert result.artifacts["student.onnx"] == out / "student.onnx"
    assert [p.name for p in out.iterdir() if p.name.startswith("student.onnx")] == ["student.onnx"]
    model = onnx.load(str(out / "student.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == ONNX_OPSET
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free batch dim

    # Same class as student.pt on every held-out synthetic sample (the split re-created from the
    # checkpoints), and on the rest of the synthetic set too.
    data = _synthetic_set(saved)
    assert len(data) == manifest["metrics"]["num_samples"]
    train, holdout = data.split(HOLDOUT, result.spec.seed)
    assert deployment["onnx"]["samples"] == len(holdout) > 0
    for x in (holdout.x, train.x, holdout.x[:1]):
        np.testing.assert_array_equal(
            _ort_classes(out / "student.onnx", x), _torch_classes(out / "student.pt", x)
        )
    onnx_info = deployment["onnx"]
    assert onnx_info["kept"] is True and onnx_info["opset"] == ONNX_OPSET
    assert onnx_info["top1_agreement"] == 1.0
    assert 0.0 <= onnx_info["max_abs_logit_diff"] < 1e-3
    assert result.metrics["onnx_max_abs_logit_diff"] == onnx_info["max_abs_logit_diff"]

    # int8: the manifest's numbers are the ones the rule was applied to, and the file is there
    # exactly when the rule kept it.
    int8 = deployment["int8"]
    assert int8["format"] == "QDQ" and int8["min_ratio"] == INT8_MIN_RATIO
    assert int8["calibration_samples"] == min(256, len(train))
    decision = int8_decision(int8["agreement_fp32"], int8["agreement_int8"], int8["min_ratio"])
    assert int8["kept"] is decision.kept and int8["ratio"] == decision.ratio
    assert int8["reason"] == decision.reason
    assert (out / "student.int8.onnx").exists() is int8["kept"]
    assert ("student.int8.onnx" in result.artifacts) is int8["kept"]
    assert result.metrics["int8_kept"] == (1.0 if int8["kept"] else 0.0)
    teacher_on_holdout = _torch_classes(digits_teacher.path, holdout.x)
    fp32 = float(np.mean(_ort_classes(out / "student.onnx", holdout.x) == teacher_on_holdout))
    assert int8["agreement_fp32"] == pytest.approx(fp32)

    # The table: measured rows for what was kept, sizes and parameters as on disk.
    assert deployment["latency"] == {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "batch_sizes": [1, 64],
        "statistic": "median",
    }
    rows = {row["artifact"]: row for row in deployment["table"]}
    expected = {"teacher.pt", "student.pt", "student.onnx"} | (
        {"student.int8.onnx"} if int8["kept"] else set()
    )
    assert set(rows) == expected
    files = {"teacher.pt": Path(digits_teacher.path)} | {
        a: out / a for a in expected - {"teacher.pt"}
    }
    for name, row in rows.items():
        assert set(row) == TABLE_KEYS, name
        assert row["size_bytes"] == files[name].stat().st_size, name
        assert row["latency_ms_batch_1"] > 0 and row["latency_ms_batch_64"] > 0, name
        assert LATENCY_MIN_REPEATS <= row["repeats"] <= LATENCY_MAX_REPEATS, name
    assert rows["teacher.pt"]["parameters"] == _parameters(digits_teacher.path)
    student_parameters = _parameters(out / "student.pt")
    assert student_parameters == result.metrics["student_parameters"]
    assert {rows[a]["parameters"] for a in expected - {"teacher.pt"}} == {student_parameters}
    assert rows["student.onnx"]["agreement_teacher"] == pytest.approx(fp32)
    pt = float(np.mean(_torch_classes(out / "student.pt", holdout.x) == teacher_on_holdout))
    assert rows["student.pt"]["agreement_teacher"] == pytest.approx(pt)
    assert (rows["student.pt"]["format"], rows["student.onnx"]["format"]) == ("torchscript", "onnx")
    assert (rows["teacher.pt"]["runtime"], rows["student.onnx"]["runtime"]) == (
        "torchscript",
        "onnxruntime",
    )

    # The log says what happened; report.md shows the table.
    logged = [e for e in events if e.event == "deployment"]
    assert any("student.onnx" in e.message and e.level == "info" for e in logged)
    assert not [e for e in logged if e.level == "warning"]
    report = (out / "report.md").read_text()
    assert "## Deployment" in report
    for name in expected:
        assert f"| `{name}` |" in report
    assert f"| `teacher.pt` | torchscript | {rows['teacher.pt']['size_bytes']:,} |" in report


def _confident_inputs(module: nn.Module, shape: tuple[int, ...], n: int) -> torch.Tensor:
    """``n`` random inputs on which ``module``'s top two logits are far apart: an int8 model that
    does its job keeps their class, so the kept case does not hang on near ties."""
    x = torch.randn((8 * n, *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        top = module(x).topk(2, dim=1).values
    return x[(top[:, 0] - top[:, 1]).argsort(descending=True)[:n]]


@pytest.fixture
def mlp_student(tmp_path: Path) -> tuple[nn.Module, Path, tuple[int, ...]]:
    """A registry MLP saved as ``student.pt``; it is its own teacher (fp32 agreement 1.0)."""
    shape = (16,)
    torch.manual_seed(0)
    student = build_student("mlp", shape, 10, 0.25).eval()
    export_student(student, tmp_path / "student.pt", shape, 10)
    return student, tmp_path / "student.pt", shape


def test_int8_kept_when_it_keeps_the_agreement(mlp_student, tmp_path):
    student, student_pt, shape = mlp_student
    teacher = torch.jit.load(str(student_pt))
    check = _confident_inputs(student, shape, 200)
    calibration = torch.randn((256, *shape), generator=torch.Generator().manual_seed(2))
    result = build_deployment(
        student, student_pt, teacher, student_pt, 1, shape, check, calibration, tmp_path
    )
    int8 = result.section["int8"]
    assert int8["kept"] is True, int8
    assert int8["agreement_fp32"] == 1.0 and int8["ratio"] >= INT8_MIN_RATIO
    assert int8["ratio"] == int8["agreement_int8"] / int8["agreement_fp32"]
    assert "at least the 0.99 required" in int8["reason"]
    assert result.artifacts["student.int8.onnx"] == tmp_path / "student.int8.onnx"
    got = _ort_classes(tmp_path / "student.int8.onnx", check)
    assert float(np.mean(got == _torch_classes(student_pt, check))) == int8["agreement_int8"]
    # Real int8 weights: a QDQ graph, and a smaller file than the fp32 one.
    ops = {n.op_type for n in onnx.load(str(tmp_path / "student.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (tmp_path / "student.int8.onnx").stat().st_size < (
        tmp_path / "student.onnx"
    ).stat().st_size
    rows = {row["artifact"]: row for row in result.section["table"]}
    assert rows["student.int8.onnx"]["format"] == "onnx-int8"
    assert rows["student.int8.onnx"]["agreement_teacher"] == int8["agreement_int8"]
    assert result.metrics["int8_kept"] == 1.0
    assert [level for _, level, _ in result.events] == ["info", "info"]


def test_int8_refused_when_calibration_ruins_its_agreement(mlp_student, tmp_path):
    """One calibration sample 10^4 times too large stretches the input range so far that every
    checked input quantizes to (nearly) the same value: the int8 model really loses its
    agreement, and the rule refuses it while the job's other files stay."""
    student, student_pt, shape = mlp_student
    teacher = torch.jit.load(str(student_pt))
    check = _confident_inputs(student, shape, 200)
    calibration = torch.randn((256, *shape), generator=torch.Generator().manual_seed(2))
    calibration[-1] *= 1e4
    result = build_deployment(
        student, student_pt, teacher, student_pt, 1, shape, check, calibration, tmp_path
    )
    int8 = result.section["int8"]
    assert int8["kept"] is False and int8["agreement_fp32"] == 1.0
    assert int8["ratio"] is not None and int8["ratio"] < INT8_MIN_RATIO
    assert int8["agreement_int8"] == int8["ratio"]
    assert "below the 0.99 required" in int8["reason"]
    assert not (tmp_path / "student.int8.onnx").exists()
    assert set(result.artifacts) == {"student.onnx"}
    assert {row["artifact"] for row in result.section["table"]} == {
        "teacher.pt",
        "student.pt",
        "student.onnx",
    }
    assert result.metrics["int8_kept"] == 0.0
    refused = [e for e in result.events if "student.int8.onnx not kept" in e[0]]
    assert len(refused) == 1 and refused[0][1] == "info" and refused[0][2]["ratio"] == int8["ratio"]


def test_int8_rule_at_its_threshold():
    assert int8_decision(0.8, 0.792).kept is True  # ratio 0.99 exactly
    assert int8_decision(0.8, 0.79).kept is False
    assert int8_decision(0.8, 0.79, min_ratio=0.9).kept is True
    refused = int8_decision(0.0, 0.3)
    assert refused.kept is False and refused.ratio is None
    assert int8_decision(float("nan"), 1.0).kept is False


class _Unexportable(nn.Module):
    """A working, scriptable student whose forward uses an operator the ONNX exporter lacks."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return logits + 0.0 * torch.linalg.svdvals(logits.detach()).sum()


def test_export_failure_costs_the_onnx_files_only(mlp_student, tmp_path):
    inner, _, shape = mlp_student
    student = _Unexportable(inner).eval()
    export_student(student, tmp_path / "student.pt", shape, 10)
    teacher = torch.jit.load(str(tmp_path / "student.pt"))
    x = torch.randn((64, *shape), generator=torch.Generator().manual_seed(3))
    result = build_deployment(
        student, tmp_path / "student.pt", teacher, tmp_path / "student.pt", 1, shape, x, x, tmp_path
    )
    assert result.artifacts == {}
    assert not (tmp_path / "student.onnx").exists()
    assert not (tmp_path / "student.int8.onnx").exists()
    onnx_info, int8 = result.section["onnx"], result.section["int8"]
    assert onnx_info["kept"] is False and onnx_info["top1_agreement"] is None
    assert "linalg_svdvals" in onnx_info["reason"]
    assert int8["kept"] is False and int8["reason"] == "no student.onnx to quantize"
    warnings = [(m, data) for m, level, data in result.events if level == "warning"]
    assert len(warnings) == 1 and warnings[0][0].startswith("no student.onnx:")
    assert "linalg_svdvals" in warnings[0][0]
    # The TorchScript rows are still measured.
    assert [row["artifact"] for row in result.section["table"]] == ["teacher.pt", "student.pt"]
    assert result.metrics["int8_kept"] == 0.0
    assert np.isnan(result.metrics["onnx_max_abs_logit_diff"])


def test_a_job_whose_student_cannot_be_exported_still_succeeds(
    digits_teacher, tmp_path, monkeypatch
):
    """The pipeline end to end with that student: a warning event, no ONNX files, success."""
    import cake_core.pipeline as pipeline

    real_build = pipeline.build_student
    monkeypatch.setattr(pipeline, "build_student", lambda *args: _Unexportable(real_build(*args)))
    events: list[Progress] = []
    result = run_job(
        digits_teacher.path,
        digits_teacher.input_shape,
        {**TINY, "student": {"arch": "mlp", "width": 0.125}},
        tmp_path,
        runtime=default_runtime("cpu"),
        on_progress=events.append,
    )
    assert set(result.artifacts) == {
        "student.pt",
        "manifest.json",
        "samples.png",
        "curves.png",
        "report.md",
    }
    assert not list(tmp_path.glob("*.onnx"))
    warned = [e for e in events if e.event == "deployment" and e.level == "warning"]
    assert len(warned) == 1 and "no student.onnx" in warned[0].message
    assert warned[0].phase == "exporting" and warned[0].data["kept"] is False
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["deployment"]["onnx"]["kept"] is False
    assert manifest["metrics"]["int8_kept"] == 0.0
    assert manifest["metrics"]["onnx_max_abs_logit_diff"] is None
    assert events[-1].fraction == 1.0 and events[-1].message == "done"
    assert "not stored" in (tmp_path / "report.md").read_text()


def test_latency_is_a_median_within_its_budget():
    calls: list[int] = []
    latency = measure_latency(lambda: calls.append(1), budget_s=0.0)
    assert latency.repeats == LATENCY_MIN_REPEATS and len(calls) == LATENCY_MIN_REPEATS + 1
    latency = measure_latency(lambda: calls.append(1), budget_s=60.0, max_repeats=7)
    assert latency.repeats == 7 and latency.median_ms >= 0


def test_a_teacher_that_synthesis_ran_with_gradients_still_gets_its_table(tmp_path):
    """Synthesis runs the teacher with gradients to its input; TorchScript's profiling executor
    then specialises the ViT's graph for autograd, and that graph refused inputs made under
    ``torch.inference_mode`` ("Inference tensors cannot be saved for backward"): the zoo's ViT
    teacher lost its whole deployment step that way. The step must run after such passes."""
    shape = (1, 8, 8)
    torch.manual_seed(0)
    teacher = torch.jit.script(build_student("vit", shape, 10, 0.25).eval())
    teacher_pt = tmp_path / "teacher.pt"
    torch.jit.save(teacher, str(teacher_pt))
    teacher = torch.jit.load(str(teacher_pt))
    for _ in range(3):  # as synthesis steps do: the executor specialises after a few runs
        x = torch.randn((16, *shape), requires_grad=True)
        teacher(x).sum().backward()
    student = build_student("lenet5", shape, 10, 0.5).eval()
    export_student(student, tmp_path / "student.pt", shape, 10)
    check = torch.randn((64, *shape), generator=torch.Generator().manual_seed(3))
    result = build_deployment(
        student, tmp_path / "student.pt", teacher, teacher_pt, 1, shape, check, check, tmp_path
    )
    assert result.section["onnx"]["kept"] is True, result.section["onnx"]["reason"]
    assert [row["artifact"] for row in result.section["table"]][:3] == [
        "teacher.pt",
        "student.pt",
        "student.onnx",
    ]
    x = torch.randn((16, *shape), requires_grad=True)  # and the teacher still trains inputs
    teacher(x).sum().backward()
    assert x.grad is not None
