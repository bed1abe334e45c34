"""Does the student fit its synthetic set, and does that carry over to real data?

A probe for one zoo teacher, not a benchmark: it trains the `fast` student (LeNet-5-Half) on a
synthetic set ``bench.fidelity --synthesis-cache DIR`` already made (seed 0 of the `fast` row, or
``--synthesis-seed N``; a set not in the cache is made and kept there),
with training overrides, and every ten epochs prints the student's agreement with the teacher
on 1,000 of its own (clean) training samples, on the held-out synthetic samples, and on the
real test split. It tells underfitting (low on its own samples) from overfitting (high on
them, low on the held-out ones) and both from samples that do not carry over to real data.

    python -m bench.fidelity --teachers digits_vit --seeds 1 --no-references --synthesis-cache DIR
    python -m bench.fit_probe digits_vit --synthesis-cache DIR --training '{"adversarial": 0}'
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.fidelity import synthesis_cache_key
from bench.quality import SynthesisReuse, SynthesisSets
from bench.zoo import get_teacher
from cake_core.config import resolve_spec
from cake_core.device import Runtime, default_runtime
from cake_core.distill import SyntheticSet, train_student
from cake_core.evaluate import agreement, predict
from cake_core.pipeline import _Reporter, _synthesize_all
from cake_core.spec import JobSpec
from cake_core.students import build_student
from cake_core.teacher import TeacherInfo, inspect_teacher

STUDENT: dict[str, Any] = {"arch": "lenet5", "width": 0.5}


@dataclass(frozen=True)
class ProbeSet:
    """A zoo teacher with its cached `fast` synthetic set, split as a job splits it, and its
    real test split (which only judges)."""

    teacher: torch.jit.ScriptModule
    info: TeacherInfo
    runtime: Runtime
    spec: JobSpec
    train: SyntheticSet
    holdout: SyntheticSet
    x_real: torch.Tensor
    y_real: torch.Tensor


def load_probe_set(
    name: str,
    cache: Path,
    synthesis_seed: int = 0,
    training: dict[str, Any] | None = None,
    synthesis: dict[str, Any] | None = None,
) -> ProbeSet:
    """``name``'s `fast` synthetic set of job seed ``synthesis_seed`` from ``cache`` (made and
    kept there when missing), with ``training`` overrides in the spec (they leave the set as
    it is: the cache key is the synthesis spec's) and ``synthesis`` overrides (another set)."""
    cached = get_teacher(name)
    runtime = default_runtime("cpu")
    teacher, info = inspect_teacher(cached.path, cached.input_shape, device=runtime.device)
    preset = {"preset": "fast", "seed": synthesis_seed, "student": STUDENT}
    if synthesis:
        preset["synthesis"] = synthesis
    store = SynthesisReuse(SynthesisSets(cache), synthesis_cache_key(cached, preset))
    spec = resolve_spec({**preset, "training": training or {}}, num_classes=info.num_classes)
    data, _, _ = _synthesize_all(
        teacher, spec, info, runtime, _Reporter(None), lambda: False, store
    )
    if store.hits == 0:
        print("note: the set was not in the cache; it was made now", flush=True)
    train, holdout = data.split(spec.training.holdout_fraction, spec.seed)
    real = np.load(cached.eval_path)
    x_real = torch.tensor(real["x"]).float().view(-1, *info.input_shape)
    y_real = torch.tensor(real["y"]).long()
    return ProbeSet(teacher, info, runtime, spec, train, holdout, x_real, y_real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="a zoo teacher (bench/zoo.py)")
    parser.add_argument("--synthesis-cache", type=Path, required=True, metavar="DIR")
    parser.add_argument("--training", default="{}", help="JSON overrides of the training spec")
    parser.add_argument("--training-seed", type=int, default=0)
    parser.add_argument(
        "--synthesis-seed", type=int, default=0, help="the job seed whose synthetic set is used"
    )
    args = parser.parse_args()

    probe = load_probe_set(
        args.teacher, args.synthesis_cache, args.synthesis_seed, json.loads(args.training)
    )
    teacher, info, runtime, spec = probe.teacher, probe.info, probe.runtime, probe.spec
    train, holdout, x_real = probe.train, probe.holdout, probe.x_real
    own = train.x[:1000]
    inputs = {"own": own, "held-out": holdout.x, "real": x_real}
    labels = {name: predict(teacher, x, runtime.device) for name, x in inputs.items()}

    torch.manual_seed(args.training_seed)
    student = build_student(STUDENT["arch"], info.input_shape, info.num_classes, STUDENT["width"])

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch % 10 and epoch != spec.training.epochs:
            return
        was_training = student.training
        student.eval()
        scores = {
            name: agreement(predict(student, inputs[name], runtime.device), labels[name])
            for name in inputs
        }
        student.train(was_training)
        print(
            f"epoch {epoch:3d}  loss {metrics['loss']:.3f}  "
            + "  ".join(f"{name} {value:.3f}" for name, value in scores.items()),
            flush=True,
        )

    train_student(
        student,
        teacher,
        train,
        holdout,
        spec.training,
        runtime,
        seed=args.training_seed,
        num_classes=info.num_classes,
        on_epoch=on_epoch,
    )


if __name__ == "__main__":
    main()
