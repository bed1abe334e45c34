"""ResNet-18 student adapted to small images (CIFAR-style stem, no max-pool)."""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from cake_core.students.registry import StudentArch, register, scaled

STAGE_CHANNELS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projected when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 ([2, 2, 2, 2] basic blocks) with channels 64..512 times ``width``.

    The ImageNet stem (7x7 stride-2 conv + max-pool) would shrink a 32 px image to 8 px before
    the first block; a 3x3 stride-1 stem keeps small inputs' resolution. Global average
    pooling makes the head independent of H and W, so any size (8x8 included) works.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        channels = [scaled(c, width) for c in STAGE_CHANNELS]
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], channels[0], 3, 1, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_channels = channels[0]
        for stage, (out_channels, count) in enumerate(zip(channels, BLOCKS_PER_STAGE, strict=True)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(self.pool(x).flatten(1))


ARCH = register(
    StudentArch(
        name="resnet18",
        description=(
            "ResNet-18 for small images [C, H, W]: 3x3 stem, no max-pool, global average "
            "pooling (any size from 4x4); channels 64-512 times width."
        ),
        builder=ResNet18,
    )
)
