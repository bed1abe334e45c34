"""A whole distillation pipeline against a running cake-distill service, in Python.

1. train a small CNN teacher on scikit-learn's 8x8 digits and export it with ``torch.jit.save``;
2. upload it and its held-out real split (``cake_client``), create a job and wait for it,
   printing its progress;
3. download the student and its report, evaluate the student on the held-out real split (data
   the distillation never saw), and print teacher vs student accuracy.

Exits 0 when the student reaches ``--min-ratio`` of the teacher's accuracy, 1 when it does not
or the job failed, 2 when the service cannot be reached or refuses the request. Start a service
first (``cake serve``), then, from the repository root::

    python examples/pipeline.py                       # --url or $CAKE_URL; $CAKE_API_KEY if set
    python examples/pipeline.py --epochs 20 --min-ratio 0.8 --out out/pipeline

Needs torch, scikit-learn and ``cake_client`` (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python examples/pipeline.py`
    sys.path.insert(0, str(ROOT))

from cake_client import CakeAPIError, CakeError, Client, JobProgress, WaitTimeout  # noqa: E402
from examples.teachers import train_digits_cnn  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_SERVICE = 0, 1, 2
INPUT_SHAPE = [1, 8, 8]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="the service (default $CAKE_URL, else :8000)")
    p.add_argument("--out", type=Path, default=Path("out/pipeline"), help="where files go")
    p.add_argument("--teacher-epochs", type=int, default=40, help="teacher training epochs")
    p.add_argument("--preset", default="fast", help="job preset: fast, default, reference")
    p.add_argument("--student", default="lenet5", help="student architecture")
    p.add_argument("--width", type=float, default=0.5, help="student width multiplier")
    p.add_argument("--num-samples", type=int, help="synthetic samples (default: the preset's)")
    p.add_argument("--steps", type=int, help="synthesis steps (default: the preset's)")
    p.add_argument("--epochs", type=int, help="student training epochs (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="student training batch (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-ratio", type=float, default=0.9, help="student/teacher accuracy floor")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job")
    return p


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job spec: the preset, with only the fields the flags set on top."""
    spec: dict[str, Any] = {"preset": args.preset, "seed": args.seed}
    spec["student"] = {"arch": args.student, "width": args.width}
    synthesis = {"num_samples": args.num_samples, "steps": args.steps}
    if synthesis := {k: v for k, v in synthesis.items() if v is not None}:
        spec["synthesis"] = synthesis
    training = {"epochs": args.epochs, "batch_size": args.batch_size}
    if training := {k: v for k, v in training.items() if v is not None}:
        spec["training"] = training
    return spec


def accuracy(model: torch.jit.ScriptModule, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(x).float()).argmax(dim=1).numpy()
    return float((predicted == y).mean())


class ProgressPrinter:
    """Print a line when the job's status or phase changes, or every 10% in between."""

    def __init__(self) -> None:
        self.last: tuple[str, str, float] | None = None

    def __call__(self, p: JobProgress) -> None:
        if self.last is not None:
            status, phase, shown = self.last
            if (status, phase) == (p.status, p.phase) and p.progress < shown + 0.1:
                return
        self.last = (p.status, p.phase, p.progress)
        message = f"  {p.message}" if p.message else ""
        print(f"  [{p.progress:4.0%}] {p.status:<9} {p.phase:<12}{message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"== 1. train a teacher on scikit-learn digits ({args.teacher_epochs} epochs)")
    trained = train_digits_cnn(seed=args.seed, epochs=args.teacher_epochs)
    teacher_path = args.out / "teacher.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(trained.model.eval()), str(teacher_path))
    eval_path = trained.save_eval(args.out / "heldout.npz")
    print(f"   {teacher_path}: {len(trained.y_test)} held-out real digits kept aside")

    with Client(args.url) as client:
        try:
            client.ready()
            print(f"== 2. upload to {client.base_url}")
            teacher = client.teachers.upload(teacher_path, INPUT_SHAPE, name="digits-example")
            dataset = client.datasets.upload(eval_path, name="digits-heldout")
            print(f"   teacher {teacher.id}, evaluation data set {dataset.id}")
            spec = job_spec(args)
            job = client.jobs.create(teacher.id, spec=spec, eval_dataset_id=dataset.id)
            print(f"== 3. job {job.id}: {spec}")
            job = job.wait(timeout=args.timeout, on_progress=ProgressPrinter())
            if not job.succeeded:
                reason = f": {job.error.code}: {job.error.message}" if job.error else ""
                print(f"job {job.id} ended {job.status}{reason}", file=sys.stderr)
                return EXIT_FAILED
            print(f"== 4. download the student and its report into {args.out}")
            for artifact in job.artifacts():
                path = job.download(artifact.name, args.out)
                print(f"   {path} ({artifact.size_bytes:,} bytes, sha256 checked)")
        except WaitTimeout as exc:
            print(f"error: {exc} (the job goes on running on the service)", file=sys.stderr)
            return EXIT_FAILED
        except CakeAPIError as exc:
            print(f"error: the service refused: {exc}", file=sys.stderr)
            return EXIT_SERVICE
        except CakeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_SERVICE

    print("== 5. evaluate on the held-out real digits (never used to distil)")
    teacher_model = torch.jit.load(str(teacher_path))
    student_model = torch.jit.load(str(args.out / "student.pt"))
    teacher_acc = accuracy(teacher_model, trained.x_test, trained.y_test)
    student_acc = accuracy(student_model, trained.x_test, trained.y_test)
    ratio = student_acc / max(teacher_acc, 1e-12)
    params = {k: int(job.metrics.get(f"{k}_parameters", 0)) for k in ("teacher", "student")}
    print(f"teacher accuracy: {teacher_acc:.4f} ({params['teacher']:,} parameters)")
    print(f"student accuracy: {student_acc:.4f} ({params['student']:,} parameters)")
    service_acc = float(job.metrics.get("student_accuracy", float("nan")))
    print(f"service reported student accuracy: {service_acc:.4f}")
    print(f"ratio: {ratio:.4f} (required: {args.min_ratio:.2f})")
    print(f"report: {args.out / 'report.md'}")
    if ratio < args.min_ratio:
        print(
            f"the student reaches {ratio:.1%} of the teacher's accuracy, below "
            f"{args.min_ratio:.0%}: try more --epochs/--num-samples or the default preset",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
