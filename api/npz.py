"""Validate an evaluation data set (``.npz`` with ``x`` and ``y``) with numpy, in bounded memory.

``np.load`` would read both arrays whole (a 1 GiB upload = 1 GiB of RSS in the API). Instead
each member's ``.npy`` header is read for dtype and shape, and the data is streamed through in
4 MiB blocks to check that ``x`` is finite and to find ``y``'s range. Object arrays (pickles) are
refused from the header alone, as ``allow_pickle=False`` would. This runs in the API process, so
a zip bomb (a ``savez_compressed`` member that inflates a thousandfold) is refused from the
central directory before any member is read: streaming it would cost minutes of CPU. That check
is the engine's zip guard (``cake_core.zipguard``), the one teacher files pass too.
"""

from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cake_core.errors import DatasetInvalidError
from cake_core.shapes import MAX_RANK
from cake_core.zipguard import UnsafeZipError, ZipLimits, check_declared_sizes, open_zip

_BLOCK = 4 << 20
MAX_RATIO = 100
"""Largest accepted expansion of the whole archive (real data compresses ~2-10x)."""
MAX_ENTRIES = 64
_ZIP_LIMITS = ZipLimits(max_entries=MAX_ENTRIES, max_expansion=MAX_RATIO, expansion_floor=64 << 20)


@dataclass(frozen=True)
class DatasetFacts:
    num_examples: int
    input_shape: list[int]
    num_classes: int


def _header(fh: IO[bytes], name: str) -> tuple[tuple[int, ...], Any]:
    import numpy as np

    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise DatasetInvalidError(f"{name} uses .npy format {version}; save it with np.savez")
    except DatasetInvalidError:
        raise
    except Exception:
        raise DatasetInvalidError(f"{name} is not a valid .npy array") from None
    if dtype.hasobject:
        raise DatasetInvalidError(f"{name} holds Python objects; only numeric arrays are allowed")
    return tuple(int(d) for d in shape), dtype


def _blocks(fh: IO[bytes], dtype: Any, count: int, name: str) -> Any:
    """Yield the array's elements in blocks; a short member is a truncated file."""
    import numpy as np

    per_block = max(1, _BLOCK // max(1, dtype.itemsize))
    remaining = count
    while remaining > 0:
        n = min(per_block, remaining)
        data = fh.read(n * dtype.itemsize)
        if len(data) != n * dtype.itemsize:
            raise DatasetInvalidError(f"{name} is truncated")
        remaining -= n
        yield np.frombuffer(data, dtype=dtype)


def _unsafe_zip_message(exc: UnsafeZipError) -> str:
    """What the zip guard found, said for a data set."""
    if exc.kind == "entries":
        return f"the .npz declares {exc.declared} entries; it must hold only the arrays x and y"
    return (
        f"the .npz declares {exc.declared} bytes of arrays in a {exc.size}-byte file (more than "
        f"{MAX_RATIO}x compression: a zip bomb?); save it with np.savez, uncompressed"
    )


def inspect_npz(path: str | Path) -> DatasetFacts:
    """Check the ``.npz`` and describe it.

    Raises:
        DatasetInvalidError: not a zip/npz, ``x``/``y`` missing, wrong dtypes or shapes,
            non-finite ``x``, negative labels, empty.
    """
    import numpy as np

    try:
        zf = open_zip(path, _ZIP_LIMITS)
    except UnsafeZipError as exc:
        raise DatasetInvalidError(_unsafe_zip_message(exc)) from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        raise DatasetInvalidError(
            "not an .npz file (np.savez(path, x=x, y=y) writes one)"
        ) from None
    with zf:
        try:
            check_declared_sizes(zf.infolist(), Path(path).stat().st_size, _ZIP_LIMITS)
        except UnsafeZipError as exc:
            raise DatasetInvalidError(_unsafe_zip_message(exc)) from None
        names = set(zf.namelist())
        if "x.npy" not in names or "y.npy" not in names:
            raise DatasetInvalidError("the .npz must contain arrays named 'x' and 'y'")
        try:
            with zf.open("x.npy") as fh:
                x_shape, x_dtype = _header(fh, "x")
                if not np.issubdtype(x_dtype, np.floating):
                    raise DatasetInvalidError(f"x must be floating point (float32), got {x_dtype}")
                if not 2 <= len(x_shape) <= MAX_RANK + 1:
                    raise DatasetInvalidError(
                        f"x has shape {list(x_shape)}, expected [N, *input_shape] with 1 to "
                        f"{MAX_RANK} input dimensions"
                    )
                if x_shape[0] == 0:
                    raise DatasetInvalidError("the data set is empty")
                if min(x_shape[1:]) < 1:
                    raise DatasetInvalidError(f"x has shape {list(x_shape)}: empty dimension")
                for block in _blocks(fh, x_dtype, math.prod(x_shape), "x"):
                    if not np.isfinite(block).all():
                        raise DatasetInvalidError("x must hold finite values (no NaN or Inf)")
            with zf.open("y.npy") as fh:
                y_shape, y_dtype = _header(fh, "y")
                if not np.issubdtype(y_dtype, np.integer):
                    raise DatasetInvalidError(f"y must hold integer class indices, got {y_dtype}")
                if y_shape != (x_shape[0],):
                    raise DatasetInvalidError(
                        f"y has shape {list(y_shape)}, expected [{x_shape[0]}] (one label per "
                        "row of x)"
                    )
                low, high = None, None
                for block in _blocks(fh, y_dtype, y_shape[0], "y"):
                    b_low, b_high = int(block.min()), int(block.max())
                    low = b_low if low is None else min(low, b_low)
                    high = b_high if high is None else max(high, b_high)
        except DatasetInvalidError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            raise DatasetInvalidError(f"the .npz file is corrupt ({type(exc).__name__})") from None
    assert low is not None and high is not None
    if low < 0:
        raise DatasetInvalidError(f"y holds negative class {low}; classes are 0..C-1")
    return DatasetFacts(
        num_examples=x_shape[0], input_shape=list(x_shape[1:]), num_classes=high + 1
    )
