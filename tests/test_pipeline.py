"""The whole job: real teachers, the `fast` preset, judged on held-out real data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cake_core.config import WIDTH_GIVEN, resolve_spec
from cake_core.device import default_runtime
from cake_core.errors import DatasetInvalidError, JobCanceled, SpecError, TeacherInvalidError
from cake_core.pipeline import (
    PHASES,
    DirectoryCheckpoints,
    JobResult,
    Progress,
    _training_range,
    run_job,
)
from cake_core.students import choose_width

SMALL = {
    "synthesis": {"num_samples": 400, "steps": 10, "chunk_batches": 2},
    "training": {"epochs": 3},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("teacher_name", "student"),
    [("digits_teacher", {"arch": "lenet5", "width": 0.5}), ("wine_teacher", {"width": 0.125})],
)
def test_fast_preset_reaches_85_percent_of_teacher(request, teacher_name, student, tmp_path):
    teacher = request.getfixturevalue(teacher_name)
    reports: list[Progress] = []
    result = run_job(
        teacher.path,
        teacher.input_shape,
        {"preset": "fast", "student": student},
        tmp_path,
        eval_path=teacher.eval_path,
        runtime=default_runtime("cpu"),
        on_progress=reports.append,
    )
    m = result.metrics
    assert m["teacher_accuracy"] == pytest.approx(teacher.accuracy)
    assert m["student_accuracy"] >= 0.85 * m["teacher_accuracy"], m
    assert m["student_parameters"] < m["teacher_parameters"]
    assert [r.phase for r in reports if r.phase_fraction == 0.0][:1] == ["synthesizing"]
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {r.phase for r in reports} == set(PHASES)


def test_artifacts_manifest_and_clean_reload(digits_teacher, tmp_path):
    result = run_job(
        digits_teacher.path,
        digits_teacher.input_shape,
        {"preset": "fast", **SMALL},
        tmp_path,
        eval_path=digits_teacher.eval_path,
        runtime=default_runtime("cpu"),
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    int8_kept = manifest["deployment"]["int8"]["kept"]
    assert set(result.artifacts) == {
        "student.pt",
        "student.onnx",
        "manifest.json",
        "samples.png",
        "curves.png",
        "report.md",
    } | ({"student.int8.onnx"} if int8_kept else set())
    assert manifest["teacher"]["sha256"] == result.teacher.sha256
    assert manifest["input_shape"] == [1, 8, 8] and manifest["num_classes"] == 10
    assert manifest["spec"]["synthesis"]["num_samples"] == 400
    assert manifest["spec"]["student"]["arch"] == "lenet5"
    for key in (
        "agreement_synthetic",
        "teacher_parameters",
        "student_parameters",
        "synthesis_seconds",
        "training_seconds",
        "samples_per_second",
        "teacher_accuracy",
        "student_accuracy",
        "agreement_eval",
    ):
        assert key in manifest["metrics"], key
    assert {"torch", "cake_core", "python"} <= set(manifest["versions"])
    assert (tmp_path / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    assert "![samples](samples.png)" in report and "![curves](curves.png)" in report

    # The student runs in a Python that has only torch: nothing of this project importable.
    code = (
        "import sys, torch\n"
        "sys.modules['cake_core'] = None\n"
        f"m = torch.jit.load({str(tmp_path / 'student.pt')!r})\n"
        "print(list(m(torch.zeros(5, 1, 8, 8)).shape))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert out.stdout.strip() == "[5, 10]"


def test_tabular_teacher_gets_no_sample_grid_and_groups_fit_classes(wine_teacher, tmp_path):
    result = run_job(
        wine_teacher.path, wine_teacher.input_shape, SMALL, tmp_path, runtime=default_runtime("cpu")
    )
    assert "samples.png" not in result.artifacts
    assert result.spec.synthesis.groups == 3
    assert result.spec.synthesis.batch_size % 3 == 0
    assert result.spec.student.arch == "mlp"


def test_candidate_estimates_only_on_request(wine_teacher, tmp_path):
    """Jobs report one fidelity estimate; the zoo asks for the candidates it compares."""
    spec = {**SMALL, "training": {**SMALL.get("training", {}), "holdout_fraction": 0.2}}
    spec["input_range"] = [-3.0, 3.0]  # adds the candidate read on samples clipped to it
    runs = {
        wanted: run_job(
            wine_teacher.path,
            wine_teacher.input_shape,
            spec,
            tmp_path / str(wanted),
            runtime=default_runtime("cpu"),
            diagnostics=wanted,
        ).metrics
        for wanted in (False, True)
    }
    assert "fidelity_estimate" in runs[False]
    assert not [k for k in runs[False] if k.startswith("estimate_")]
    probes = {k: v for k, v in runs[True].items() if k.startswith("estimate_")}
    assert {"estimate_plain", "estimate_noise25", "estimate_mix", "estimate_range"} <= set(probes)
    assert all(0.0 <= v <= 1.0 for v in probes.values())


def _student_events(reports: list[Progress]) -> list[Progress]:
    return [r for r in reports if r.event == "student"]


@pytest.mark.parametrize("student", [None, {"arch": "mlp"}, {"width": None}])
def test_default_student_has_at_most_half_the_teachers_parameters(wine_teacher, tmp_path, student):
    spec = {**SMALL} if student is None else {**SMALL, "student": student}
    reports: list[Progress] = []
    result = run_job(
        wine_teacher.path,
        wine_teacher.input_shape,
        spec,
        tmp_path,
        runtime=default_runtime("cpu"),
        on_progress=reports.append,
    )
    m = result.metrics
    teacher, student_parameters = m["teacher_parameters"], m["student_parameters"]
    assert student_parameters <= teacher / 2
    assert m["compression"] == pytest.approx(teacher / student_parameters) and m["compression"] >= 2
    expected = choose_width("mlp", wine_teacher.input_shape, 3, int(teacher))
    assert result.spec.student.width == expected.width and expected.within_budget
    assert result.spec.student.width_reason == expected.reason
    assert "largest width" in expected.reason and "half the teacher's" in expected.reason
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["spec"]["student"] == {
        "arch": "mlp",
        "width": expected.width,
        "width_reason": expected.reason,
    }
    assert manifest["student"]["width"] == expected.width
    assert manifest["student"]["width_reason"] == expected.reason
    assert manifest["metrics"]["compression"] == m["compression"]
    assert "| width chosen |" in (tmp_path / "report.md").read_text()
    (event,) = _student_events(reports)
    assert event.level == "info" and event.phase == "synthesizing"
    assert event.data == {
        "arch": "mlp",
        "width": expected.width,
        "width_reason": expected.reason,
        "student_parameters": int(student_parameters),
        "teacher_parameters": int(teacher),
        "compression": pytest.approx(m["compression"]),
    }
    # The event is a log line, not progress: it comes first and moves nothing.
    assert reports[0] is event and event.fraction == 0.0
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions)


def _run_with_reports(teacher, tmp_path, student: dict) -> tuple[JobResult, list[Progress]]:
    """A SMALL job with ``student`` overrides, and every progress report it sent."""
    reports: list[Progress] = []
    result = run_job(
        teacher.path,
        teacher.input_shape,
        {**SMALL, "student": student},
        tmp_path,
        runtime=default_runtime("cpu"),
        on_progress=reports.append,
    )
    return result, reports


def test_explicit_width_is_honoured_and_a_larger_student_warned_about(wine_teacher, tmp_path):
    result, reports = _run_with_reports(wine_teacher, tmp_path, {"width": 1.0})
    m = result.metrics
    assert result.spec.student.width == 1.0
    assert result.spec.student.width_reason == WIDTH_GIVEN
    assert m["student_parameters"] > m["teacher_parameters"]
    assert m["compression"] == pytest.approx(m["teacher_parameters"] / m["student_parameters"])
    assert m["compression"] < 1
    (event,) = _student_events(reports)
    assert event.level == "warning"
    assert event.message.startswith("the student is larger than its teacher: mlp at width 1 ")
    assert "leave student.width out" in event.message
    assert event.data["width"] == 1.0 and event.data["width_reason"] == WIDTH_GIVEN


def test_explicit_width_smaller_than_the_teacher_is_no_warning(wine_teacher, tmp_path):
    result, reports = _run_with_reports(wine_teacher, tmp_path, {"width": 0.125})
    assert result.spec.student.width == 0.125
    assert result.metrics["student_parameters"] < result.metrics["teacher_parameters"]
    (event,) = _student_events(reports)
    assert event.level == "info" and "given in the spec" in event.message


def test_cancel_stops_the_job(digits_teacher, tmp_path):
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(JobCanceled):
        run_job(
            digits_teacher.path,
            digits_teacher.input_shape,
            SMALL,
            tmp_path,
            runtime=default_runtime("cpu"),
            should_cancel=should_cancel,
        )
    assert not (tmp_path / "student.pt").exists()


def test_resume_after_interruption_matches_uninterrupted_run(digits_teacher, tmp_path):
    spec = {"preset": "fast", **SMALL, "training": {"epochs": 4}}
    runtime = default_runtime("cpu")
    straight = run_job(
        digits_teacher.path, digits_teacher.input_shape, spec, tmp_path / "a", runtime=runtime
    )

    store = DirectoryCheckpoints(tmp_path / "ckpt")
    epochs_seen: list[int] = []

    def stop_after_two_epochs(p: Progress) -> None:
        if p.phase == "training" and p.metrics.get("epoch"):
            epochs_seen.append(int(p.metrics["epoch"]))

    with pytest.raises(JobCanceled):
        run_job(
            digits_teacher.path,
            digits_teacher.input_shape,
            spec,
            tmp_path / "b",
            runtime=runtime,
            checkpoints=store,
            on_progress=stop_after_two_epochs,
            should_cancel=lambda: len(epochs_seen) >= 2,
        )
    assert store.load("synthesis/000000") is not None
    assert store.load("training")["epoch"] == 2

    resumed_reports: list[Progress] = []
    resumed = run_job(
        digits_teacher.path,
        digits_teacher.input_shape,
        spec,
        tmp_path / "c",
        runtime=runtime,
        checkpoints=store,
        on_progress=resumed_reports.append,
    )
    trained_epochs = [int(r.metrics["epoch"]) for r in resumed_reports if "epoch" in r.metrics]
    assert trained_epochs == [3, 4], "resumed training must continue after epoch 2"
    a = torch.jit.load(str(tmp_path / "a" / "student.pt"))
    c = torch.jit.load(str(tmp_path / "c" / "student.pt"))
    probe = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(a(probe), c(probe), rtol=1e-4, atol=1e-4)
    assert resumed.metrics["agreement_synthetic"] == straight.metrics["agreement_synthetic"]


def test_bad_inputs_raise_typed_errors(digits_teacher, wine_teacher, tmp_path):
    runtime = default_runtime("cpu")
    with pytest.raises(SpecError, match=r"synthesis\.groups"):
        run_job(wine_teacher.path, (13,), {"synthesis": {"groups": 10}}, tmp_path, runtime=runtime)
    with pytest.raises(SpecError, match=r"student\.arch"):
        run_job(
            wine_teacher.path,
            (13,),
            {"student": {"arch": "lenet5"}, **SMALL},
            tmp_path,
            runtime=runtime,
        )
    with pytest.raises(TeacherInvalidError):
        run_job(digits_teacher.path, (13,), SMALL, tmp_path, runtime=runtime)
    with pytest.raises(DatasetInvalidError, match="shape"):
        run_job(
            digits_teacher.path,
            (1, 8, 8),
            SMALL,
            tmp_path,
            runtime=runtime,
            eval_path=wine_teacher.eval_path,
        )


def _scripted(*layers: torch.nn.Module) -> torch.jit.ScriptModule:
    return torch.jit.script(torch.nn.Sequential(*layers).eval())


def test_training_range_only_for_image_teachers_without_batchnorm() -> None:
    """The clip to input_range cost the zoo's BatchNorm teachers 6 to 14 points: never there."""
    nn = torch.nn
    conv = _scripted(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))
    bn = _scripted(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))
    table = _scripted(torch.nn.Linear(5, 3))
    ranged = resolve_spec({"input_range": [-1, 1], "training": {"range_contrast": 2.0}})
    assert _training_range(conv, (1, 8, 8), ranged)[0] == (-1.0, 1.0)
    for teacher, shape, spec, why in [
        (bn, (1, 8, 8), ranged, "BatchNorm"),
        (table, (5,), ranged, "not an image"),
        (conv, (1, 8, 8), resolve_spec({"training": {"range_contrast": 2.0}}), "no input_range"),
        (conv, (1, 8, 8), resolve_spec({"input_range": [-1, 1], "preset": "reference"}), "off"),
    ]:
        applied, reason = _training_range(teacher, shape, spec)
        assert applied is None and why in reason, (why, reason)
