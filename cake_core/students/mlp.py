"""Multi-layer perceptron student: the default for feature vectors (tabular data)."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from cake_core.students.registry import StudentArch, register, scaled

HIDDEN = (256, 256)
MIN_HIDDEN = 8


class MLP(nn.Module):
    """Flatten, then ``Linear -> [BatchNorm1d] -> ReLU`` per hidden layer, then a linear head.

    Any input rank works because the input is flattened, so small images can be distilled
    into an MLP too. BatchNorm (on by default) makes training insensitive to the scale of raw
    tabular features; it needs training batches of more than one sample.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: float = 1.0,
        hidden: Sequence[int] = HIDDEN,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        features = math.prod(input_shape)
        for base in hidden:
            units = scaled(base, width, minimum=MIN_HIDDEN)
            # The bias is redundant right before BatchNorm's own shift.
            layers.append(nn.Linear(features, units, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU(inplace=True))
            features = units
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


ARCH = register(
    StudentArch(
        name="mlp",
        description=(
            "MLP, 2 hidden layers of 256 x width units with BatchNorm and ReLU; flattens any "
            "input. Best for 13-64 tabular features or small flattened images."
        ),
        builder=MLP,
    )
)
