"""LeNet-5 student (ReLU + max pooling), shaped to fit any image size from 1x1 upward."""

from collections.abc import Sequence

import torch
from torch import nn

from cake_core.students.registry import StudentArch, register, scaled

# Channels of the two convolutions, then the two hidden fully connected layers.
CONV1, CONV2, FC1, FC2 = 6, 16, 120, 84
KERNEL = 5


def side_plan(side: int) -> tuple[int, int, int, int, int]:
    """Padding and pooling along one spatial axis: (pad1, pool1, pad2, pool2, output side).

    LeNet-5 was designed for 32 px inputs (MNIST was padded to 32x32), so a shorter side gets
    "same" padding on the first convolution: 28 px then yields the classic 16x5x5 features.
    Sides too short for an unpadded second convolution are padded there too, and a pooling
    that would leave nothing is skipped, so even 8x8 (or 1x1) inputs build.
    """
    pad1 = 0 if side >= 32 else KERNEL // 2
    side += 2 * pad1 - (KERNEL - 1)
    pool1 = 2 if side >= 2 else 1
    side //= pool1
    pad2 = 0 if side >= 10 else KERNEL // 2
    side += 2 * pad2 - (KERNEL - 1)
    pool2 = 2 if side >= 2 else 1
    side //= pool2
    return pad1, pool1, pad2, pool2, side


def _pool(kernel_h: int, kernel_w: int) -> nn.Module:
    if kernel_h == kernel_w == 1:
        return nn.Identity()
    return nn.MaxPool2d((kernel_h, kernel_w))


class LeNet5(nn.Module):
    """conv(6)-pool-conv(16)-pool-fc(120)-fc(84)-fc(classes); ``width`` scales every layer.

    Width 0.5 is LeNet-5-Half (3, 8, 60, 42). Height and width are planned independently,
    so non-square inputs work.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        c1, c2, f1, f2 = (scaled(n, width) for n in (CONV1, CONV2, FC1, FC2))
        ph1, kh1, ph2, kh2, out_h = side_plan(height)
        pw1, kw1, pw2, kw2, out_w = side_plan(width_px)
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, KERNEL, padding=(ph1, pw1)),
            nn.ReLU(inplace=True),
            _pool(kh1, kw1),
            nn.Conv2d(c1, c2, KERNEL, padding=(ph2, pw2)),
            nn.ReLU(inplace=True),
            _pool(kh2, kw2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * out_h * out_w, f1),
            nn.ReLU(inplace=True),
            nn.Linear(f1, f2),
            nn.ReLU(inplace=True),
            nn.Linear(f2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


ARCH = register(
    StudentArch(
        name="lenet5",
        description=(
            "LeNet-5 (ReLU, max pooling) for small images [C, H, W]; width 0.5 is "
            "LeNet-5-Half. Padding and pooling adapt to the image size (8x8 and up)."
        ),
        builder=LeNet5,
    )
)
