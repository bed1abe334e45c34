"""Fidelity on a teacher the presets were not tuned on: a residual CNN with BatchNorm.

The teacher is trained here on scikit-learn's digits (the same family as ``bench.zoo``'s
``digits_resnet_bn``, at half its width to keep CI short) and judged on its held-out real split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.zoo import ResNetBN, ZooTeacher, accuracy, load_digits, train_teacher
from cake_core.device import default_runtime
from cake_core.pipeline import run_job

# Issue 9 asks for 0.90; the zoo's digits ResNet-BN reaches 0.84-0.86 with `fast` today
# (bench/README.md), so this guards what is reached, not the goal.
MIN_RATIO = 0.80


@pytest.fixture(scope="module")
def resnet_bn_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    split = load_digits()
    zoo = ZooTeacher(
        "digits_resnet_bn_small",
        load_digits,
        lambda shape, classes: ResNetBN(shape[0], classes, base=8),
        {},
        epochs=30,
        shift=1,
    )
    model = train_teacher(zoo, split, seed=0)
    teacher_accuracy = accuracy(model, split.x_test, split.y_test)
    assert teacher_accuracy > 0.95, "the teacher itself should be good"
    folder = tmp_path_factory.mktemp("resnet_bn")
    path, eval_path = folder / "teacher.pt", folder / "test.npz"
    torch.jit.save(torch.jit.script(model), str(path))
    np.savez(eval_path, x=split.x_test, y=split.y_test)
    return path, eval_path, teacher_accuracy


@pytest.mark.slow
def test_fast_job_on_a_batchnorm_resnet_teacher(resnet_bn_teacher, tmp_path) -> None:
    path, eval_path, teacher_accuracy = resnet_bn_teacher
    result = run_job(
        path,
        (1, 8, 8),
        {"preset": "fast", "student": {"arch": "lenet5", "width": 0.5}},
        tmp_path,
        eval_path=eval_path,
        runtime=default_runtime("cpu"),
    )
    m = result.metrics
    assert m["teacher_accuracy"] == pytest.approx(teacher_accuracy)
    assert m["batchnorm_layers"] > 0, "the BatchNorm prior should be in use"
    on_target = [entry["target_accuracy"] for entry in result.synthesis_log]
    assert min(on_target) >= 0.9, on_target
    assert m["accuracy_ratio"] >= MIN_RATIO, m
    assert 0.0 <= m["fidelity_estimate"] <= 1.0 and m["fidelity_estimate_samples"] > 0, m
