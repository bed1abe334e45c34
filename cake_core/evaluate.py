"""Agreement and accuracy, computed in batches without gradients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cake_core.errors import DatasetInvalidError


@torch.no_grad()
def predict(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    device: torch.device,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Top-1 class of every row of ``x`` (CPU tensor of int64)."""
    out = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].to(device)
        out.append(model(batch).float().argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of positions where two label vectors agree."""
    return float((a == b).float().mean()) if len(a) else float("nan")


def load_eval_arrays(
    path: str, input_shape: tuple[int, ...], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an evaluation ``.npz`` (``x`` float ``[N, *input_shape]``, ``y`` int ``[N]``).

    Only used to report accuracy, never to train. Loaded with ``allow_pickle=False``.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise DatasetInvalidError("the .npz must contain arrays named 'x' and 'y'")
            x, y = data["x"], data["y"]
    except DatasetInvalidError:
        raise
    except Exception as exc:
        raise DatasetInvalidError(f"not a readable .npz file ({type(exc).__name__})") from None
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DatasetInvalidError(
            f"x has shape {list(x.shape)}, expected [N, {', '.join(map(str, input_shape))}]"
        )
    if y.shape != (x.shape[0],):
        raise DatasetInvalidError(f"y has shape {list(y.shape)}, expected [{x.shape[0]}]")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetInvalidError(f"y must hold integer class indices, got {y.dtype}")
    if len(y) == 0:
        raise DatasetInvalidError("the data set is empty")
    if y.min() < 0 or y.max() >= num_classes:
        raise DatasetInvalidError(
            f"y holds classes {int(y.min())}..{int(y.max())}, the teacher has {num_classes}"
        )
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise DatasetInvalidError("x must be finite floating-point values")
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


def evaluate_on_data(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    student: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
) -> dict[str, float]:
    """Teacher accuracy, student accuracy and their top-1 agreement on real data."""
    teacher_pred = predict(teacher, x, device)
    student_pred = predict(student, x, device)
    return {
        "teacher_accuracy": agreement(teacher_pred, y),
        "student_accuracy": agreement(student_pred, y),
        "agreement_eval": agreement(student_pred, teacher_pred),
    }


CONFIDENT = 0.9


@torch.no_grad()
def fidelity_estimate(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    student: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    device: torch.device,
) -> dict[str, float]:
    """A data-free estimate of the student's agreement with the teacher on real data.

    Users have no real data to judge a student with, only the synthetic samples held out from
    training. Those sit near the teacher's decision boundary, where any student disagrees
    most, while real data mostly lies well inside a class: so the estimate is the agreement on
    the held-out samples the teacher itself is confident about (top probability >=
    ``CONFIDENT``), which landed closest to the real agreement on the fidelity zoo
    (``bench/fidelity.py`` reports the gap per teacher). With no confident sample it falls
    back to the plain held-out agreement.
    """
    if not len(x):
        return {}
    probs = torch.cat([teacher(b.to(device)).float().softmax(1).cpu() for b in x.split(1024)])
    confidence, teacher_pred = probs.max(dim=1)
    same = (predict(student, x, device) == teacher_pred).float()
    confident = confidence >= CONFIDENT
    estimate = same[confident].mean() if bool(confident.any()) else same.mean()
    return {
        "fidelity_estimate": float(estimate),
        "fidelity_estimate_samples": float(confident.sum() if bool(confident.any()) else len(x)),
    }


@torch.no_grad()
def estimate_probes(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    student: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    device: torch.device,
    seed: int = 0,
    input_range: tuple[float, float] | None = None,
) -> dict[str, float]:
    """Candidate data-free estimates (diagnostics the fidelity zoo compares with real agreement).

    Each perturbs the held-out synthetic samples away from where training put them: Gaussian
    noise of a quarter and a half of their spread, mixtures of two samples, (images) one-pixel
    shifts and, with the inputs' range known, the samples clipped to it (``range``), where real
    inputs lie; each is read on all samples and on those the teacher is confident about.
    """
    if len(x) < 2:
        return {}
    gen = torch.Generator().manual_seed(seed + 7919)
    spread = float(x.float().std())
    views: dict[str, torch.Tensor] = {"plain": x}
    for name, scale in (("noise25", 0.25), ("noise50", 0.5)):
        views[name] = x + scale * spread * torch.randn(x.shape, generator=gen)
    lam = torch.rand((len(x),), generator=gen).view(-1, *[1] * (x.dim() - 1))
    views["mix"] = lam * x + (1 - lam) * x[torch.randperm(len(x), generator=gen)]
    if x.dim() == 4:
        views["shift"] = torch.roll(x, shifts=(1, 1), dims=(2, 3))
    if input_range is not None:
        views["range"] = x.clamp(*input_range)
    out: dict[str, float] = {}
    for name, view in views.items():
        probs = torch.cat(
            [teacher(b.to(device)).float().softmax(1).cpu() for b in view.split(1024)]
        )
        confidence, teacher_pred = probs.max(dim=1)
        same = (predict(student, view, device) == teacher_pred).float()
        out[f"estimate_{name}"] = float(same.mean())
        confident = confidence >= CONFIDENT
        if bool(confident.any()):
            out[f"estimate_{name}_conf"] = float(same[confident].mean())
    return out
