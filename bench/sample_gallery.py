"""A zoo teacher's synthetic samples beside its real test images: a PNG and a few statistics.

A look, not a benchmark: numbers say how far a student follows its teacher, pictures say what
the samples are. Rows 1-2 of the PNG are real test images; the rest are training samples of
the `fast` synthetic set (job seed 0), sorted by the teacher's class, every image clipped to
[-1, 1] for display. It showed, e.g., that many of the Fashion-MNIST LeNet-5's samples made
from white noise are white noise still (bench/README.md, "Samples that start as pink noise")::

    python -m bench.sample_gallery fmnist_lenet5 --synthesis-cache DIR --out pink.png
    python -m bench.sample_gallery fmnist_lenet5 --synthesis-cache DIR --out white.png \
        --synthesis '{"prior": "normal"}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.fit_probe import load_probe_set


def describe(x: torch.Tensor) -> str:
    """Spread, range and saturation of a batch of images in [-1, 1] terms."""
    x = x.float()
    per_image = x.flatten(1)
    return (
        f"mean {float(x.mean()):+.3f}, std {float(x.std()):.3f}, "
        f"outside [-1, 1] {float((x.abs() > 1).float().mean()):.3f}, "
        f"below -0.9 {float((x < -0.9).float().mean()):.3f}, "
        f"neighbour step {float((x[..., 1:] - x[..., :-1]).abs().mean()):.3f}, "
        f"per-image std {float(per_image.std(1).mean()):.3f}"
    )


def tiles(x: torch.Tensor) -> np.ndarray:
    """One row of grey images side by side, [-1, 1] mapped to 0..255."""
    pixels = ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    return np.concatenate(list(pixels), axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="a zoo image teacher (bench/zoo.py)")
    parser.add_argument("--synthesis-cache", type=Path, required=True, metavar="DIR")
    parser.add_argument("--synthesis", default="{}", help="JSON overrides of `fast`'s synthesis")
    parser.add_argument("--per-row", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("gallery.png"))
    args = parser.parse_args()

    probe = load_probe_set(args.teacher, args.synthesis_cache, synthesis=json.loads(args.synthesis))
    if len(probe.info.input_shape) != 3:
        parser.error(f"{args.teacher} does not take images")
    train, real = probe.train, probe.x_real
    print(f"real      {describe(real)}")
    print(f"synthetic {describe(train.x)}")

    n = args.per_row
    order = torch.argsort(train.teacher_classes(), stable=True)
    step = max(1, len(order) // 6)
    rows = [tiles(real[i::10][:n]) for i in range(2)]
    rows += [tiles(train.x[order[i * step : i * step + n]]) for i in range(6)]
    image = np.concatenate(rows, axis=0)
    scale = max(1, 96 // probe.info.input_shape[-1])
    Image.fromarray(image).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
    ).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
