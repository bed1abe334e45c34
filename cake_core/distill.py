"""Train the student to predict like the teacher on the synthetic set.

The loss is the cross-entropy between the teacher's distribution and the student's, both at
temperature ``T`` (scaled by ``T**2`` so gradients keep their size). Beyond the reference:
with ``relabel`` the teacher labels every training batch afresh, which makes augmenting the
synthetic samples (``mixup`` between samples, Gaussian ``input_noise``, fresh noise inputs
mixed in with ``noise_mix``, boxes pasted between images with ``cutmix``) safe: the label always
matches the input the student sees. Each is switchable and measured in ``bench/quality``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cake_core.config import TrainingSpec
from cake_core.device import Runtime
from cake_core.errors import JobCanceled, TrainingDivergedError
from cake_core.evaluate import agreement, predict

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class SyntheticSet:
    """Synthetic inputs with the teacher's labels: ``labels`` soft ``[n, C]`` or hard ``[n]``."""

    x: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)

    def teacher_classes(self) -> torch.Tensor:
        return self.labels.argmax(dim=1) if self.labels.dim() == 2 else self.labels

    def split(self, holdout_fraction: float, seed: int) -> tuple[SyntheticSet, SyntheticSet]:
        """Random split into (train, holdout); at least one sample on each side when possible."""
        n = len(self)
        holdout = min(n - 1, max(1, round(n * holdout_fraction))) if holdout_fraction > 0 else 0
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        held, kept = order[:holdout], order[holdout:]
        return SyntheticSet(self.x[kept], self.labels[kept]), SyntheticSet(
            self.x[held], self.labels[held]
        )


@dataclass
class TrainingState:
    """What a checkpoint needs to resume training after a finished epoch."""

    epoch: int
    student: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * CE(teacher_probs, softmax(student / T))``, mean over the batch."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    return -(teacher_probs * log_p).sum(dim=1).mean() * temperature**2


def _make_optimizer(
    student: nn.Module, spec: TrainingSpec, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    decay, no_decay = [], []
    for param in student.parameters():
        (decay if param.dim() > 1 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer: torch.optim.Optimizer
    if spec.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=spec.lr, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=spec.lr)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if spec.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=spec.lr,
            total_steps=total_steps,
            div_factor=25,
            final_div_factor=1e4,
            cycle_momentum=spec.optimizer == "sgd",
        )
    else:
        warmup = max(1, total_steps // 20)

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    return optimizer, scheduler


def _toward_disagreement(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    student: nn.Module,
    x: torch.Tensor,
    step: float,
    steps: int = 1,
) -> torch.Tensor:
    """Move the first half of ``x`` ``steps`` signed-gradient steps up the teacher-student KL.

    Synthetic samples cover the input space unevenly; this finds, around them, the inputs
    where the student is still wrong, so training spends its effort where it matters (the
    student-aware "hard samples" of DFAD and CSD, searched around each batch).
    """
    half = x[: max(1, len(x) // 2)].detach()
    # The student answers in eval mode here: the search must not move BatchNorm's running
    # statistics, and train-mode BatchNorm cannot take the one sample a batch of 2 or 3 gives.
    was_training = student.training
    student.eval()
    try:
        for _ in range(steps):
            half.requires_grad_(True)
            with torch.enable_grad():
                teacher_log_p = F.log_softmax(teacher(half).float(), dim=1)
                student_log_p = F.log_softmax(student(half).float(), dim=1)
                kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="sum")
                (grad,) = torch.autograd.grad(kl, half)
            half = (half + step * grad.sign()).detach()
    finally:
        student.train(was_training)
    return torch.cat([half, x[len(half) :]])


def _translate(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each image ``[N, C, H, W]`` by up to ``fraction`` of its side, edges repeated."""
    shifts = (torch.rand((len(x), 2), generator=generator) * 2 - 1) * (2 * fraction)
    theta = torch.zeros((len(x), 2, 3))
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shifts
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _cutmix(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Paste into each image ``[N, C, H, W]`` a random box of another; its area is uniform.

    Unlike mixup, every pixel stays a pixel of one sample: the teacher sees parts of two
    samples side by side (CutMix), which a patch-based teacher reads unlike a blend of two.
    """
    n, _, height, width = x.shape
    side = (1 - torch.rand(n, generator=generator)).sqrt()  # box side / image side
    h, w = (side * height).round(), (side * width).round()
    cy, cx = torch.rand(n, generator=generator) * height, torch.rand(n, generator=generator) * width
    y0, y1 = (cy - h / 2).clamp(0, height), (cy + h / 2).clamp(0, height)
    x0, x1 = (cx - w / 2).clamp(0, width), (cx + w / 2).clamp(0, width)
    rows = torch.arange(height).view(1, -1, 1) + 0.5
    cols = torch.arange(width).view(1, 1, -1) + 0.5
    box = (rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
    box = box & (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1))
    perm = torch.randperm(n, generator=generator).to(x.device)
    return torch.where(box.unsqueeze(1).to(x.device), x[perm], x)


def _contrast_within(
    x: torch.Tensor, most: float, bounds: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Scale each input about its own mean by a factor drawn from ``[1, most]``, then clip it to
    ``bounds``, the range real inputs lie in.

    Synthetic samples of a teacher without BatchNorm spread far outside the real range (the
    digits ViT's: -4..3.4 for inputs in [-1, 1]). Stretched and clipped, they show the teacher
    saturated, high-contrast inputs of the real range, where the student is judged. With
    ``most`` 3, over three seeds of whole `fast` jobs, it gave the digits ViT +9.8 points and
    the other image teachers without BatchNorm +1.0 to +1.5 (bench/README.md). On the two
    BatchNorm ResNets the clip cost 6 and 14 points in a training probe: the caller leaves them
    out.
    """
    scale = 1 + (most - 1) * torch.rand((len(x), *[1] * (x.dim() - 1)), generator=generator)
    mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return (mean + scale.to(x.device, x.dtype) * (x - mean)).clamp(*bounds)


def _targets(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    student: nn.Module,
    x: torch.Tensor,
    stored: torch.Tensor,
    spec: TrainingSpec,
    num_classes: int,
    generator: torch.Generator,
    input_range: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch the student trains on and the teacher distribution it should match."""
    if spec.relabel:
        mixed = round(spec.noise_mix * len(x))
        if mixed > 0:
            noise = torch.randn((mixed, *x.shape[1:]), generator=generator).to(x.device, x.dtype)
            x = torch.cat([x[: len(x) - mixed], noise])
        if spec.translate > 0 and x.dim() == 4:
            x = _translate(x, spec.translate, generator)
        cut = spec.cutmix > 0 and x.dim() == 4
        if cut and float(torch.rand((), generator=generator)) < spec.cutmix:
            x = _cutmix(x, generator)
        elif spec.mixup > 0:
            lam = torch.distributions.Beta(spec.mixup, spec.mixup).sample((len(x),))
            lam = lam.to(x.device).view(-1, *[1] * (x.dim() - 1))
            perm = torch.randperm(len(x), generator=generator).to(x.device)
            x = lam * x + (1 - lam) * x[perm]
        if input_range is not None and spec.range_contrast > 1 and x.dim() == 4:
            x = _contrast_within(x, spec.range_contrast, input_range, generator)
        if spec.input_noise > 0:
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = x + spec.input_noise * noise
        if spec.adversarial > 0:
            x = _toward_disagreement(teacher, student, x, spec.adversarial, spec.adversarial_steps)
        with torch.no_grad():
            probs = (teacher(x).float() / spec.temperature).softmax(dim=1)
        return x, probs
    if stored.dim() == 1:
        return x, F.one_hot(stored, num_classes).float()
    if spec.temperature != 1.0:
        stored = (stored.clamp_min(1e-12).log() / spec.temperature).softmax(dim=1)
    return x, stored


def train_student(
    student: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    train: SyntheticSet,
    holdout: SyntheticSet,
    spec: TrainingSpec,
    runtime: Runtime,
    *,
    seed: int,
    num_classes: int,
    resume: TrainingState | None = None,
    on_epoch: EpochCallback | None = None,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    input_range: tuple[float, float] | None = None,
) -> list[dict[str, float]]:
    """Train ``student`` in place; return the per-epoch history.

    ``on_epoch(epoch, metrics)`` reports progress; ``on_checkpoint`` receives a
    :class:`TrainingState` after each epoch; ``should_stop`` is checked between batches.
    ``input_range`` (the range real inputs lie in) turns on ``spec.range_contrast``.
    """
    device = runtime.device
    student.to(device)
    steps_per_epoch = max(1, math.ceil(len(train) / spec.batch_size))
    optimizer, scheduler = _make_optimizer(student, spec, spec.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    first_epoch = 0
    if resume is not None:
        student.load_state_dict(resume.student)
        optimizer.load_state_dict(resume.optimizer)
        scheduler.load_state_dict(resume.scheduler)
        history = list(resume.history)
        first_epoch = resume.epoch
    holdout_teacher = holdout.teacher_classes()

    for epoch in range(first_epoch, spec.epochs):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(seed * 1009 + epoch)
        torch.manual_seed(seed * 1013 + epoch)
        order = torch.randperm(len(train), generator=generator)
        student.train()
        total_loss, batches = 0.0, 0
        for start in range(0, len(train), spec.batch_size):
            if should_stop is not None and should_stop():
                raise JobCanceled("canceled during training")
            idx = order[start : start + spec.batch_size]
            if len(idx) < 2 and len(train) > 1:
                continue
            x = train.x[idx].to(device)
            x, probs = _targets(
                teacher, student, x, train.labels[idx].to(device), spec, num_classes, generator,
                input_range,
            )  # fmt: skip
            with runtime.autocast_context():
                logits = student(x)
            loss = soft_cross_entropy(logits, probs, spec.temperature)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"student loss became non-finite in epoch {epoch + 1}; "
                    f"lower training.lr (now {spec.lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += float(loss.detach())
            batches += 1
        student.eval()
        metrics = {
            "epoch": float(epoch + 1),
            "loss": total_loss / max(1, batches),
            "agreement_synthetic": agreement(predict(student, holdout.x, device), holdout_teacher)
            if len(holdout)
            else float("nan"),
            "lr": float(scheduler.get_last_lr()[0]),
            "seconds": time.perf_counter() - started,
        }
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)
        if on_checkpoint is not None:
            on_checkpoint(
                TrainingState(
                    epoch=epoch + 1,
                    student=student.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    history=list(history),
                )
            )
    student.eval()
    return history
