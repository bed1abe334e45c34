"""Broken TorchScript teachers shared by the teacher-check tests (``tests/test_teacher.py``,
in process) and the API tests that upload them to a real server (``tests/api``).

Each one is a [13] -> 3 classifier (the wine teacher's shape) with one defect the teacher check
must find and name; scripting and saving them is up to the test.
"""

from __future__ import annotations

import torch
from torch import nn


class NaNOut(nn.Module):
    """Logits that are NaN for every input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * float("nan")


class WrongShape(nn.Module):
    """A 3-d output ([batch, 3, 2]) where [batch, classes] is expected."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).reshape(x.shape[0], 3, 2)


class IntOut(nn.Module):
    """Integer logits: nothing to take a gradient of."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).long()


class TupleOut(nn.Module):
    """A tuple where one tensor of logits is expected."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, y


class Hang(nn.Module):
    """A classifier whose forward pass never returns (and allocates nothing while looping)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            i = i + 1
        return self.fc(x)
