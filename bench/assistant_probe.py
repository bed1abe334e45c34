"""Would a teacher assistant close the gap? Teacher -> larger student -> LeNet-5-Half.

A probe for one zoo teacher, not a benchmark. On the teachers that stay low (the ViT, the
Fashion-MNIST ResNet-BN) LeNet-5-Half underfits the labels the teacher gives its synthetic
samples, while a ResNet-18-style student fits them (bench/README, "Why the ViT and the
Fashion-MNIST ResNet-BN stay low"). Teacher-assistant distillation (TAKD, Mirzadeh et al.
2020) bridges such a capacity gap with an intermediate model: here the assistant is trained on
the teacher's `fast` synthetic set exactly as a job trains its student, then LeNet-5-Half is
trained on the same samples with the assistant as its teacher (labels and online relabelling).
The direct student (the teacher itself as teacher) runs in the same process for comparison.
Everything is judged against the real teacher on the zoo's real test split.

    python -m bench.fidelity --teachers digits_vit --seeds 1 --no-references --synthesis-cache DIR
    python -m bench.assistant_probe digits_vit --synthesis-cache DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.fidelity import teacher_probs
from bench.fit_probe import STUDENT, load_probe_set
from cake_core.distill import SyntheticSet, train_student
from cake_core.evaluate import agreement, predict
from cake_core.students import build_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="a zoo teacher (bench/zoo.py)")
    parser.add_argument("--synthesis-cache", type=Path, required=True, metavar="DIR")
    parser.add_argument("--assistant", default='{"arch": "resnet18", "width": 0.125}')
    parser.add_argument("--training-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    assistant_spec: dict[str, Any] = json.loads(args.assistant)

    probe = load_probe_set(args.teacher, args.synthesis_cache)
    teacher, info, runtime, spec = probe.teacher, probe.info, probe.runtime, probe.spec
    train, holdout, x_real, y_real = probe.train, probe.holdout, probe.x_real, probe.y_real
    teacher_real = predict(teacher, x_real, runtime.device)
    teacher_accuracy = agreement(teacher_real, y_real)

    def judge(model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            pred = predict(model, x_real, runtime.device)
            held = predict(model, holdout.x, runtime.device)
        return {
            "accuracy_ratio": agreement(pred, y_real) / teacher_accuracy,
            "agreement_real": agreement(pred, teacher_real),
            "agreement_holdout_teacher": agreement(held, holdout.teacher_classes()),
        }

    def fit(arch: str, width: float, guide: Any, train_set: SyntheticSet) -> torch.nn.Module:
        torch.manual_seed(args.training_seed)
        model = build_student(arch, info.input_shape, info.num_classes, width)
        started = time.perf_counter()
        train_student(
            model, guide, train_set, holdout, spec.training, runtime,
            seed=args.training_seed, num_classes=info.num_classes,
        )  # fmt: skip
        print(f"  trained {arch} w{width:g} in {time.perf_counter() - started:.0f} s", flush=True)
        return model.eval()

    results: dict[str, Any] = {"teacher": args.teacher, "teacher_accuracy": teacher_accuracy}
    direct = fit(STUDENT["arch"], STUDENT["width"], teacher, train)
    results["direct"] = judge(direct)
    print(f"direct LeNet-5-Half: {results['direct']}", flush=True)

    assistant = fit(assistant_spec["arch"], assistant_spec["width"], teacher, train)
    results["assistant"] = {**assistant_spec, **judge(assistant)}
    print(f"assistant: {results['assistant']}", flush=True)
    for p in assistant.parameters():
        p.requires_grad_(False)
    relabelled = SyntheticSet(train.x, teacher_probs(assistant, train.x, runtime.device))
    via = fit(STUDENT["arch"], STUDENT["width"], assistant, relabelled)
    results["via_assistant"] = judge(via)
    print(f"LeNet-5-Half via the assistant: {results['via_assistant']}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
