"""`cake distill` end to end, as a user runs it: a subprocess, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def cake(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cake_cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def test_distill_writes_student_manifest_and_samples(digits_teacher, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"synthesis": {"num_samples": 600, "steps": 20}}))
    out = tmp_path / "result" / "student.pt"
    proc = cake(
        "distill",
        str(digits_teacher.path),
        "--input-shape",
        "1,8,8",
        "--student",
        "lenet5",
        "--width",
        "0.5",
        "--preset",
        "fast",
        "--spec",
        str(spec),
        "--eval",
        str(digits_teacher.eval_path),
        "--seed",
        "3",
        "--input-range",
        "-1",
        "1",
        "--device",
        "cpu",
        "-o",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "student_accuracy" in proc.stdout and "agreement_synthetic" in proc.stdout
    manifest = json.loads((out.parent / "student.manifest.json").read_text())
    assert manifest["spec"]["seed"] == 3
    assert manifest["spec"]["input_range"] == [-1.0, 1.0]
    # the digits CNN has no BatchNorm: its training images were kept in that range
    assert manifest["training_input_range"]["range"] == [-1.0, 1.0]
    assert manifest["spec"]["preset"] == "fast"
    assert manifest["spec"]["synthesis"]["num_samples"] == 600
    assert manifest["student"]["width"] == 0.5
    assert (out.parent / "student.samples.png").exists()
    assert (out.parent / "student.curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out.parent / "student.report.md").read_text()
    # The report's image links follow the files to their prefixed names.
    assert "![curves](student.curves.png)" in report
    assert "![samples](student.samples.png)" in report
    student = torch.jit.load(str(out))
    assert student(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith("cake-")]
    assert leftovers == []


def _one_line_error(proc: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_file(tmp_path):
    _one_line_error(
        cake("distill", "nope.pt", "--input-shape", "13", cwd=tmp_path), "teacher file not found"
    )


def test_bad_shape(digits_teacher, tmp_path):
    _one_line_error(
        cake("distill", str(digits_teacher.path), "--input-shape", "1,x,8", cwd=tmp_path),
        "input_shape",
    )


def test_invalid_teacher(tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_text("not a model")
    _one_line_error(
        cake("distill", str(bogus), "--input-shape", "13", cwd=tmp_path), "not a TorchScript"
    )


def test_wrong_shape_for_teacher(wine_teacher, tmp_path):
    _one_line_error(
        cake("distill", str(wine_teacher.path), "--input-shape", "1,8,8", cwd=tmp_path),
        "teacher_invalid",
    )


def test_bad_spec_value(wine_teacher, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"synthesis": {"steps": -1}}))
    _one_line_error(
        cake(
            "distill",
            str(wine_teacher.path),
            "--input-shape",
            "13",
            "--spec",
            str(spec),
            cwd=tmp_path,
        ),
        "synthesis.steps",
    )


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = {"synthesis": {"num_samples": 400, "steps": 10}, "training": {"epochs": 2}}


def _bundled_wine(tmp_path: Path) -> None:
    """``examples/wine_mlp.pt`` relative to the working directory, as in the README."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "wine_mlp.pt").write_bytes((EXAMPLES / "wine_mlp.pt").read_bytes())
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))


def test_default_student_of_the_bundled_wine_teacher_is_smaller(tmp_path):
    _bundled_wine(tmp_path)
    proc = cake(
        "distill", "examples/wine_mlp.pt", "--input-shape", "13", "--spec", "tiny.json",
        "--device", "cpu", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    manifest = json.loads((tmp_path / "student.manifest.json").read_text())
    metrics = manifest["metrics"]
    assert metrics["student_parameters"] <= metrics["teacher_parameters"] / 2
    assert metrics["compression"] == metrics["teacher_parameters"] / metrics["student_parameters"]
    assert metrics["compression"] >= 2
    width = manifest["spec"]["student"]["width"]
    assert 0.0625 <= width < 1 and manifest["student"]["width"] == width
    assert manifest["spec"]["student"]["width_reason"].startswith(f"no width given: {width:g} ")
    # What the user sees: which student and why, and the compression in the table.
    assert f"student mlp width {width:g}: " in proc.stdout
    assert "compression" in proc.stdout and f"(width {width:g})" in proc.stdout
    student = torch.jit.load(str(tmp_path / "student.pt"))
    assert sum(p.numel() for p in student.parameters()) == metrics["student_parameters"]


def test_explicit_width_larger_than_the_teacher_is_honoured_with_a_warning(tmp_path):
    _bundled_wine(tmp_path)
    proc = cake(
        "distill", "examples/wine_mlp.pt", "--input-shape", "13", "--spec", "tiny.json",
        "--width", "1", "--device", "cpu", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning: the student is larger than its teacher: mlp at width 1 " in proc.stderr
    manifest = json.loads((tmp_path / "student.manifest.json").read_text())
    assert manifest["spec"]["student"]["width"] == 1.0
    assert manifest["spec"]["student"]["width_reason"] == "given in the spec"
    assert manifest["metrics"]["compression"] < 1


def test_distill_output_by_extension_onnx(tmp_path):
    """``-o model.onnx``: the ONNX student at that path, its other forms beside it under the
    same stem (``model.pt``, ``model.int8.onnx`` when kept), the rest prefixed with the stem,
    and the report's image links following the renamed files."""
    import onnxruntime

    _bundled_wine(tmp_path)
    proc = cake(
        "distill", "examples/wine_mlp.pt", "--input-shape", "13", "--spec", "tiny.json",
        "--device", "cpu", "--quiet", "-o", "out/model.onnx", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    manifest = json.loads((out / "model.manifest.json").read_text())
    deployment = manifest["deployment"]
    assert deployment["onnx"]["kept"], deployment["onnx"]
    expected = {"model.onnx", "model.pt", "model.manifest.json", "model.curves.png"}
    expected.add("model.report.md")
    if deployment["int8"]["kept"]:
        expected.add("model.int8.onnx")
    assert {p.name for p in out.iterdir()} == expected
    assert "wrote out/model.onnx\n" in proc.stdout
    assert "![curves](model.curves.png)" in (out / "model.report.md").read_text()

    # model.onnx is the ONNX student: the same classes as model.pt (the TorchScript one).
    x = torch.randn(64, 13, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    scripted = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        assert (scripted(x).argmax(1).numpy() == onnx_logits.argmax(1)).all()


def test_place_artifacts_names_the_missing_int8_student(tmp_path):
    """``-o model.int8.onnx`` when the job did not keep int8: every other file is placed under
    the stem, and the error line gives the manifest's reason (constructed files: a real job
    keeps or refuses int8 by its own numbers)."""
    from cake_cli.main import _missing_student_file, _place_artifacts

    work = tmp_path / "work"
    work.mkdir()
    reason = "int8 agreement with the teacher 0.9000 is 0.9000 of the fp32 model's 1.0000"
    manifest = {"deployment": {"onnx": {"kept": True, "reason": "ok"},
                               "int8": {"kept": False, "reason": reason}}}  # fmt: skip
    files = {
        "student.pt": b"pt",
        "student.onnx": b"onnx",
        "manifest.json": json.dumps(manifest).encode(),
        "curves.png": b"png",
        "report.md": b"![curves](curves.png)\n",
    }
    artifacts = {}
    for name, data in files.items():
        (work / name).write_bytes(data)
        artifacts[name] = work / name
    output = tmp_path / "out" / "model.int8.onnx"
    output.parent.mkdir()
    written = _place_artifacts(artifacts, output)
    assert sorted(p.name for p in written) == [
        "model.curves.png", "model.manifest.json", "model.onnx", "model.pt", "model.report.md",
    ]  # fmt: skip
    assert (output.parent / "model.onnx").read_bytes() == b"onnx"
    assert (output.parent / "model.report.md").read_text() == "![curves](model.curves.png)\n"
    assert not output.exists()
    message = _missing_student_file(artifacts, output)
    assert message == (
        f"no student.int8.onnx to write to {output}: int8 was not kept: {reason} "
        "(the other files were written)"
    )
    assert _missing_student_file(artifacts, output.with_name("model.onnx")) == ""
