"""The fidelity zoo: real teachers of several families, trained here and cached.

Users upload teachers this project never saw, so an engine change is judged on many
architectures at once, never on one. Each teacher is trained by this module on a real data set
(scikit-learn's digits, wine and breast cancer; Debian's Fashion-MNIST), keeps a held-out real
split that only ever judges the student, and is cached as TorchScript (the format users upload)
with its test split beside it, keyed by name and seed, so a benchmark run trains each teacher
once.

    python -m bench.zoo                 # train (or load) every teacher, print their accuracy
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cake_core.students import build_student
from examples.teachers import DigitsCNN

FASHION_MNIST_DIR = Path(os.environ.get("CAKE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CACHE_DIR = Path(os.environ.get("CAKE_ZOO_CACHE", Path.home() / ".cache" / "cake-zoo"))
FASHION_MNIST_HINT = (
    "bash scripts/bench-setup.sh (apt-get install dataset-fashion-mnist) or set CAKE_FASHION_MNIST"
)


# --------------------------------------------------------------------------------------------
# data: every image in [-1, 1], like the poster's inputs; tabular features standardised
# --------------------------------------------------------------------------------------------


@dataclass
class Split:
    """A real data set split once: the teacher learns on ``train``, ``test`` only judges."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain): big-endian dims after a magic whose last byte is the rank."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    rank = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=rank, offset=4).astype(int)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(*dims)


def _idx_path(stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (FASHION_MNIST_DIR / name).exists():
            return FASHION_MNIST_DIR / name
    raise FileNotFoundError(f"{FASHION_MNIST_DIR / stem}(.gz) not found: {FASHION_MNIST_HINT}")


def load_fashion_mnist() -> Split:
    """Fashion-MNIST's own 60,000 / 10,000 split, ``[n, 1, 28, 28]`` in [-1, 1]."""

    def images(stem: str) -> np.ndarray:
        return (read_idx(_idx_path(stem)).astype(np.float32) / 127.5 - 1.0)[:, None]

    def labels(stem: str) -> np.ndarray:
        return read_idx(_idx_path(stem)).astype(np.int64)

    return Split(
        images("train-images-idx3-ubyte"),
        labels("train-labels-idx1-ubyte"),
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )


def fashion_mnist_available() -> bool:
    try:
        _idx_path("t10k-labels-idx1-ubyte")
    except FileNotFoundError:
        return False
    return True


def _sklearn_split(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Split:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    return Split(x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64))


def load_digits() -> Split:
    """scikit-learn's 1,797 8x8 digits, ``[n, 1, 8, 8]`` scaled from 0..16 to [-1, 1]."""
    from sklearn import datasets

    data = datasets.load_digits()
    return _sklearn_split((data.images.astype(np.float32) / 8.0 - 1.0)[:, None], data.target)


def load_tabular(name: str) -> Split:
    """``wine`` or ``breast_cancer``, standardised with the training split's statistics."""
    from sklearn import datasets

    data = getattr(datasets, f"load_{name}")()
    split = _sklearn_split(data.data.astype(np.float32), data.target)
    mean, std = split.x_train.mean(0), split.x_train.std(0) + 1e-6
    split.x_train = ((split.x_train - mean) / std).astype(np.float32)
    split.x_test = ((split.x_test - mean) / std).astype(np.float32)
    return split


# --------------------------------------------------------------------------------------------
# teacher architectures that are not students of the registry
# --------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNetBN(nn.Module):
    """A residual CNN with BatchNorm: stem, three stages of two blocks, global pooling."""

    def __init__(self, channels: int, num_classes: int, base: int = 16) -> None:
        super().__init__()
        widths = (base, 2 * base, 4 * base)
        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for stage, width in enumerate(widths):
            for i in range(2):
                blocks.append(ResidualBlock(in_ch, width, 2 if stage > 0 and i == 0 else 1))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class PixelMLP(nn.Module):
    """MLP on flattened pixels or features; optional LayerNorm after each hidden layer."""

    def __init__(
        self, features: int, num_classes: int, hidden: int = 128, layer_norm: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = features
        for _ in range(2):
            layers += [nn.Linear(width, hidden)]
            if layer_norm:
                layers.append(nn.LayerNorm(hidden))
            layers.append(nn.ReLU())
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


# --------------------------------------------------------------------------------------------
# the zoo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooTeacher:
    """One teacher: its data, how to build and train it, and the students it is distilled into.

    ``students`` maps a row label to a student spec (``arch`` and ``width``); the first is the
    main row. Training uses AdamW with a cosine schedule and, for images, random shifts.
    """

    name: str
    data: Callable[[], Split]
    build: Callable[[tuple[int, ...], int], nn.Module]
    students: dict[str, dict[str, Any]]
    epochs: int
    lr: float = 3e-3
    batch_size: int = 64
    shift: int = 0


LENET5_HALF = {"arch": "lenet5", "width": 0.5}
ZOO: dict[str, ZooTeacher] = {
    z.name: z
    for z in (
        ZooTeacher(
            "digits_cnn", load_digits, lambda s, c: DigitsCNN(c), {"lenet5-half": LENET5_HALF}, 40
        ),
        ZooTeacher(
            "digits_resnet_bn",
            load_digits,
            lambda s, c: ResNetBN(s[0], c),
            {"lenet5-half": LENET5_HALF, "resnet18-w0.125": {"arch": "resnet18", "width": 0.125}},
            40,
            shift=1,
        ),
        ZooTeacher(
            "digits_vit",
            load_digits,
            lambda s, c: build_student("vit", s, c, 0.5),
            {"lenet5-half": LENET5_HALF},
            80,
            lr=1e-3,
            shift=1,
        ),
        ZooTeacher(
            "digits_mlp",
            load_digits,
            lambda s, c: PixelMLP(math.prod(s), c),
            {"lenet5-half": LENET5_HALF},
            60,
        ),
        ZooTeacher(
            "fmnist_lenet5",
            load_fashion_mnist,
            lambda s, c: build_student("lenet5", s, c, 1.0),
            {"lenet5-half": LENET5_HALF},
            8,
            lr=2e-3,
            batch_size=128,
        ),
        ZooTeacher(
            "fmnist_resnet_bn",
            load_fashion_mnist,
            lambda s, c: ResNetBN(s[0], c, base=8),
            {"lenet5-half": LENET5_HALF},
            4,
            batch_size=128,
        ),
        ZooTeacher(
            "wine_mlp",
            lambda: load_tabular("wine"),
            lambda s, c: PixelMLP(s[0], c, hidden=64),
            {"mlp-half": {"arch": "mlp", "width": 0.125}},
            200,
        ),
        ZooTeacher(
            "breast_cancer_mlp_ln",
            lambda: load_tabular("breast_cancer"),
            lambda s, c: PixelMLP(s[0], c, hidden=64, layer_norm=True),
            {"mlp-half": {"arch": "mlp", "width": 0.125}},
            100,
        ),
    )
}


@dataclass
class CachedTeacher:
    """A trained zoo teacher on disk: TorchScript file and its real test split (npz)."""

    name: str
    path: Path
    eval_path: Path
    input_shape: tuple[int, ...]
    num_classes: int
    test_accuracy: float
    train_seconds: float

    @property
    def input_range(self) -> tuple[float, float] | None:
        """What a user would give as the job's ``input_range``: every zoo image is in [-1, 1];
        tabular features are standardised, with no bound."""
        return (-1.0, 1.0) if len(self.input_shape) == 3 else None


def _shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pixels`` (zero-padded), one offset per batch."""
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    padded = F.pad(x, (pixels, pixels, pixels, pixels), value=-1.0)
    h, w = x.shape[-2:]
    return padded[..., pixels + dy : pixels + dy + h, pixels + dx : pixels + dx + w]


def train_teacher(zoo: ZooTeacher, split: Split, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = zoo.build(split.input_shape, split.num_classes)
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    steps = zoo.epochs * math.ceil(len(x) / zoo.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=zoo.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, zoo.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(zoo.epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(zoo.batch_size):
            if len(idx) < 2:
                continue
            batch = x[idx]
            if zoo.shift and batch.dim() == 4:
                batch = _shift(batch, zoo.shift, gen)
            loss = F.cross_entropy(model(batch), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        logits = torch.cat([model(b) for b in torch.from_numpy(x).float().split(1000)])
    return float((logits.argmax(1).numpy() == y).mean())


def _cache_files(name: str, seed: int, cache_dir: Path) -> tuple[Path, Path, Path]:
    """The teacher's TorchScript, its real test split (npz) and its metadata (json)."""
    stem = cache_dir / f"{name}-seed{seed}"
    return stem.with_suffix(".pt"), stem.with_suffix(".npz"), stem.with_suffix(".json")


def is_cached(name: str, seed: int = 0, cache_dir: Path = CACHE_DIR) -> bool:
    """Whether ``get_teacher`` can return the teacher without its training data."""
    return all(path.exists() for path in _cache_files(name, seed, cache_dir))


def get_teacher(name: str, seed: int = 0, cache_dir: Path = CACHE_DIR) -> CachedTeacher:
    """The trained teacher ``name`` from the cache, training and caching it when missing."""
    zoo = ZOO[name]
    cache_dir.mkdir(parents=True, exist_ok=True)
    path, eval_path, meta_path = _cache_files(name, seed, cache_dir)
    if not is_cached(name, seed, cache_dir):
        split = zoo.data()
        started = time.perf_counter()
        model = train_teacher(zoo, split, seed)
        seconds = time.perf_counter() - started
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(model), str(path))
        np.savez_compressed(eval_path, x=split.x_test.astype(np.float32), y=split.y_test)
        meta = {
            "input_shape": list(split.input_shape),
            "num_classes": split.num_classes,
            "test_accuracy": accuracy(model, split.x_test, split.y_test),
            "train_seconds": seconds,
        }
        meta_path.write_text(json.dumps(meta))
    meta = json.loads(meta_path.read_text())
    return CachedTeacher(
        name,
        path,
        eval_path,
        tuple(meta["input_shape"]),
        meta["num_classes"],
        meta["test_accuracy"],
        meta["train_seconds"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="*", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in args.teachers:
        t = get_teacher(name, args.seed)
        print(
            f"{name:24s} {t.input_shape!s:14s} acc {t.test_accuracy:.3f} "
            f"trained in {t.train_seconds:.0f}s  {t.path}"
        )


if __name__ == "__main__":
    main()
