"""Real teachers trained on data sets that scikit-learn ships, for tests, benchmarks and demos.

Each function trains a small classifier on a train split and returns it with the held-out real
split, so a student distilled without data can be judged on real examples the teacher never saw.
Run as a script to write the bundled example teacher and its evaluation set:

    python -m examples.teachers --out examples/
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TrainedTeacher:
    name: str
    model: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    x_test: np.ndarray
    y_test: np.ndarray
    test_accuracy: float

    def save(self, path: str | Path) -> Path:
        """Export as TorchScript, the format the service accepts."""
        path = Path(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(self.model.eval()), str(path))
        return path

    def save_eval(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, x=self.x_test.astype(np.float32), y=self.y_test.astype(np.int64))
        return path


class DigitsCNN(nn.Module):
    """Small CNN for 1x8x8 digits scaled to [-1, 1]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc(x.flatten(1))


class TabularMLP(nn.Module):
    def __init__(self, features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _fit(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x).float()).argmax(1).numpy()
    return float((pred == y).mean())


def _split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return tuple(train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y))


def train_digits_cnn(seed: int = 0, epochs: int = 40) -> TrainedTeacher:
    """CNN on scikit-learn's 8x8 digits, pixels scaled from 0..16 to [-1, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    x_train, x_test, y_train, y_test = _split(x, data.target, seed)
    torch.manual_seed(seed)
    model = _fit(DigitsCNN(10), x_train, y_train, epochs=epochs, lr=3e-3, seed=seed)
    return TrainedTeacher(
        "digits_cnn", model, (1, 8, 8), 10, x_test, y_test, _accuracy(model, x_test, y_test)
    )


def train_tabular_mlp(name: str = "wine", seed: int = 0, epochs: int = 200) -> TrainedTeacher:
    """MLP on a standardised scikit-learn tabular set (``wine``, ``breast_cancer``, ``iris``)."""
    from sklearn import datasets

    data = getattr(datasets, f"load_{name}")()
    x_train, x_test, y_train, y_test = _split(data.data.astype(np.float32), data.target, seed)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    classes = int(data.target.max()) + 1
    torch.manual_seed(seed)
    model = _fit(
        TabularMLP(x_train.shape[1], classes),
        x_train,
        y_train,
        epochs=epochs,
        lr=3e-3,
        seed=seed,
    )
    return TrainedTeacher(
        f"{name}_mlp",
        model,
        (x_train.shape[1],),
        classes,
        x_test,
        y_test,
        _accuracy(model, x_test, y_test),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for teacher in (train_digits_cnn(), train_tabular_mlp("wine")):
        teacher.save(args.out / f"{teacher.name}.pt")
        teacher.save_eval(args.out / f"{teacher.name}_test.npz")
        print(f"{teacher.name}: held-out accuracy {teacher.test_accuracy:.3f}")


if __name__ == "__main__":
    main()
