"""Whether a ViT teacher's job repeats once its attention kernel is pinned.

``run_job`` times torch's default attention kernel against the math kernel on the CPU and keeps
the faster (``cake_core.device.tune_attention``); the two round differently, so the same spec
and seed can give another student when the timing tips the other way. This runs the same zoo
job (cached synthetic set, training and evaluation only) with each named kernel pinned and
prints the student / teacher accuracy of each run::

    python -m bench.attention_repeat --synthesis-cache DIR math math default default
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from dataclasses import replace
from pathlib import Path

import cake_core.pipeline as pipeline
from bench.fidelity import synthesis_cache_key
from bench.quality import SynthesisReuse, SynthesisSets
from bench.zoo import ZOO, get_teacher
from cake_core.device import AttentionKernel, Runtime, default_runtime


def _pinned(
    kernel: AttentionKernel, teacher: object, input_shape: object, batch: int, runtime: Runtime
) -> Runtime:
    """``tune_attention``'s signature, without the timing: always ``kernel``."""
    return replace(runtime, attention=kernel)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernels", nargs="+", choices=("default", "math"))
    parser.add_argument("--teacher", default="digits_vit")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--synthesis-cache", type=Path, required=True)
    parser.add_argument(
        "--range-contrast", type=float, help="training.range_contrast (default: the preset's)"
    )
    args = parser.parse_args(argv)
    teacher = get_teacher(args.teacher, seed=0)
    student = next(iter(ZOO[args.teacher].students.values()))
    shared = SynthesisSets(args.synthesis_cache)
    for kernel in args.kernels:
        pipeline.tune_attention = functools.partial(_pinned, kernel)  # type: ignore[assignment]
        spec = {"preset": args.preset, "seed": args.seed, "student": dict(student)}
        if teacher.input_range is not None:
            spec["input_range"] = list(teacher.input_range)
        if args.range_contrast is not None:
            spec["training"] = {"range_contrast": args.range_contrast}
        store = SynthesisReuse(shared, synthesis_cache_key(teacher, spec))
        result = pipeline.run_job(
            teacher.path, teacher.input_shape, spec, tempfile.mkdtemp(),
            eval_path=teacher.eval_path, runtime=default_runtime("cpu"), checkpoints=store,
        )  # fmt: skip
        made = "synthesis reused" if store.hits else "synthesis made"
        print(f"{kernel:8s} student/teacher {result.metrics['accuracy_ratio']:.4f} ({made})")


if __name__ == "__main__":
    main()
