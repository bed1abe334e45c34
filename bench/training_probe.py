"""Training ideas tried on a cached synthetic set without touching the engine.

``bench.fit_probe`` with one of these changes patched into ``cake_core.distill`` for the run (the
engine's options are left as they are; an idea that pays becomes an option after a zoo run):

- ``--drop F``: leave the fraction F of each batch with the highest loss out of the loss (loss
  truncation: do not chase labels the student cannot fit).
- ``--boxes K``: paste K CutMix boxes into each image instead of one.
- ``--stable-only``: train only on samples whose teacher class survives every one-pixel roll.
- ``--contrast S``: after CutMix, scale each image about its own mean by a factor drawn
  uniformly from [1, S]; ``--clamp LO HI`` then clips it to the inputs' valid range.

    python -m bench.training_probe digits_vit --synthesis-cache DIR --contrast 2 --clamp -1 1
    python -m bench.training_probe digits_vit --synthesis-cache DIR --training-seed 1

Every option prints what it did; with none the run is ``bench.fit_probe`` itself.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import bench.fit_probe as fit_probe
import cake_core.distill as distill

ROLLS = ((0, 1), (0, -1), (1, 0), (-1, 0))


def truncated_cross_entropy(drop: float) -> Callable[..., torch.Tensor]:
    """``soft_cross_entropy`` over the (1 - drop) lowest-loss items of a training batch."""

    def loss(logits: torch.Tensor, probs: torch.Tensor, temperature: float) -> torch.Tensor:
        per_item = -(probs * F.log_softmax(logits.float() / temperature, dim=1)).sum(dim=1)
        if logits.requires_grad:
            keep = max(1, round(len(per_item) * (1 - drop)))
            per_item = per_item.topk(keep, largest=False).values
        return per_item.mean() * temperature**2

    return loss


def boxes_and_contrast(
    boxes: int, contrast: float, clamp: tuple[float, float] | None
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``_cutmix`` pasting ``boxes`` boxes, then the contrast jitter and the clip."""
    one_box = distill._cutmix

    def cutmix(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for _ in range(boxes):
            x = one_box(x, generator)
        if contrast != 1.0:  # the engine's training.range_contrast, unbounded without --clamp
            x = distill._contrast_within(x, contrast, clamp or (-math.inf, math.inf), generator)
        elif clamp is not None:
            x = x.clamp(*clamp)
        return x

    return cutmix


@torch.no_grad()
def roll_stable(teacher: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mask of the images whose teacher class is the same under every one-pixel roll."""

    def classes(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([teacher(b).argmax(dim=1) for b in batch.split(512)])

    base = classes(x)
    keep = torch.ones(len(x), dtype=torch.bool)
    for dy, dx in ROLLS:
        keep &= classes(torch.roll(x, shifts=(dy, dx), dims=(-2, -1))) == base
    return keep


def stable_only(train_student: Callable[..., Any]) -> Callable[..., Any]:
    """``train_student`` on the roll-stable part of the training set only."""

    def train(
        student: Any, teacher: Any, train: distill.SyntheticSet, *args: Any, **kw: Any
    ) -> Any:
        keep = roll_stable(teacher, train.x)
        print(f"probe: {int(keep.sum())} of {len(keep)} samples are roll-stable", flush=True)
        kept = distill.SyntheticSet(train.x[keep], train.labels[keep])
        return train_student(student, teacher, kept, *args, **kw)

    return train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("--drop", type=float, default=0.0)
    parser.add_argument("--boxes", type=int, default=1)
    parser.add_argument("--stable-only", action="store_true")
    parser.add_argument("--contrast", type=float, default=1.0)
    parser.add_argument("--clamp", type=float, nargs=2, metavar=("LO", "HI"))
    args, rest = parser.parse_known_args()
    print(f"probe: {vars(args)}", flush=True)
    if args.drop > 0:
        distill.soft_cross_entropy = truncated_cross_entropy(args.drop)
    if args.boxes != 1 or args.contrast != 1.0 or args.clamp is not None:
        clamp = tuple(args.clamp) if args.clamp else None
        distill._cutmix = boxes_and_contrast(args.boxes, args.contrast, clamp)  # type: ignore[arg-type]
    if args.stable_only:
        fit_probe.train_student = stable_only(fit_probe.train_student)  # type: ignore[assignment]
    sys.argv = [sys.argv[0], *rest]
    fit_probe.main()


if __name__ == "__main__":
    main()
