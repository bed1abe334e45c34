"""Artifacts of a finished job: the student as TorchScript, a manifest, a sample grid.

``student.pt`` must run with nothing but torch installed, so it is scripted (no Python class of
this project is needed to load it) and verified by reloading it and comparing its outputs with
the in-memory student before anyone downloads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import cake_core


class ExportError(RuntimeError):
    """The exported student does not reproduce the trained one."""


def export_student(
    student: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    probe_batch: int = 3,
) -> dict[str, Any]:
    """Script, save and verify the student; return ``{"sha256", "size_bytes"}``."""
    path = Path(path)
    student = student.cpu().eval()
    probe = torch.randn((probe_batch, *input_shape), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(student)
        torch.jit.save(scripted, str(path))
        reloaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        expected = student(probe)
        got = reloaded(probe)
    if got.shape != (probe_batch, num_classes) or not torch.allclose(
        got, expected, rtol=1e-4, atol=1e-5
    ):
        raise ExportError("the exported student's outputs differ from the trained student's")
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}


def library_versions() -> dict[str, str]:
    return {
        "cake_core": cake_core.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Write the manifest as stable, human-readable JSON (``NaN`` becomes ``null``)."""
    Path(path).write_text(json.dumps(_finite(manifest), indent=2, sort_keys=True) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def is_image_shape(input_shape: tuple[int, ...]) -> bool:
    """A sample grid makes sense for ``[C, H, W]`` with 1 or 3 channels."""
    return len(input_shape) == 3 and input_shape[0] in (1, 3) and min(input_shape[1:]) >= 2


def write_sample_grid(
    path: str | Path,
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    per_class: int = 8,
    cell: int = 48,
) -> bool:
    """One column per class (by the teacher's label), ``per_class`` samples down each column.

    Each sample is scaled to its own min..max so faint structure stays visible. Returns False
    (and writes nothing) for inputs that are not images.
    """
    input_shape = tuple(x.shape[1:])
    if not is_image_shape(input_shape) or len(x) == 0:
        return False
    classes = labels.argmax(dim=1) if labels.dim() == 2 else labels
    pad = 2
    grid = np.full(
        (per_class * (cell + pad) + pad, num_classes * (cell + pad) + pad, 3), 255, np.uint8
    )
    for c in range(num_classes):
        picks = torch.nonzero(classes == c).flatten()[:per_class]
        for row, idx in enumerate(picks.tolist()):
            img = x[idx].float()
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
            arr = (img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            if arr.shape[2] == 1:
                arr = np.repeat(arr, 3, axis=2)
            tile = np.asarray(Image.fromarray(arr).resize((cell, cell), Image.NEAREST))
            top, left = pad + row * (cell + pad), pad + c * (cell + pad)
            grid[top : top + cell, left : left + cell] = tile
    Image.fromarray(grid).save(path, format="PNG")
    return True
