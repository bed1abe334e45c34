"""Validate an evaluation data set (``.npz`` with ``x`` and ``y``) with numpy, in bounded memory.

``np.load`` would read both arrays whole (a 1 GiB upload = 1 GiB of RSS in the API). Instead
each member's ``.npy`` header is read for dtype and shape, and the data is streamed through in
4 MiB blocks to check that ``x`` is finite and to find ``y``'s range. Object arrays (pickles) are
refused from the header alone, as ``allow_pickle=False`` would. This runs in the API process, so
a zip bomb (a ``savez_compressed`` member that inflates a thousandfold) is refused from the
central directory before any member is read: streaming it would cost minutes of CPU.
"""

from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cake_core.errors import DatasetInvalidError

_BLOCK = 4 << 20
MAX_RANK = 4
MAX_RATIO = 100
"""Largest accepted expansion of the whole archive (real data compresses ~2-10x)."""
_RATIO_FLOOR = 64 << 20
MAX_ENTRIES = 64


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


def _check_entry_count(path: str | Path) -> None:
    """Refuse an archive that declares many entries before zipfile builds an object per entry
    (~0.5 KB each: a 1 GiB upload of empty entries would take gigabytes of the API's memory)."""
    try:
        with open(path, "rb") as fh:
            endrec = zipfile._EndRecData(fh)  # type: ignore[attr-defined]
    except (OSError, ValueError, EOFError, struct.error):
        endrec = None
    if endrec is None:
        return  # not a zip: ZipFile says so next
    entries = int(endrec[zipfile._ECD_ENTRIES_TOTAL])  # type: ignore[attr-defined]
    if entries > MAX_ENTRIES:
        raise DatasetInvalidError(
            f"the .npz declares {entries} entries; it must hold only the arrays x and y"
        )


def inspect_npz(path: str | Path) -> DatasetFacts:
    """Check the ``.npz`` and describe it.

    Raises:
        DatasetInvalidError: not a zip/npz, ``x``/``y`` missing, wrong dtypes or shapes,
            non-finite ``x``, negative labels, empty.
    """
    import numpy as np

    _check_entry_count(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise DatasetInvalidError(
            "not an .npz file (np.savez(path, x=x, y=y) writes one)"
        ) from None
    with zf:
        size = Path(path).stat().st_size
        declared = sum(info.file_size for info in zf.infolist())
        if declared > max(MAX_RATIO * size, _RATIO_FLOOR):
            raise DatasetInvalidError(
                f"the .npz declares {declared} bytes of arrays in a {size}-byte file (more than "
                f"{MAX_RATIO}x compression: a zip bomb?); save it with np.savez, uncompressed"
            )
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
