"""Byte counts as people read them in error messages: ``8 MiB``, ``1 GiB``, ``512 B``.

On its own because the upload cap (:mod:`api.uploads`) and the teacher check's memory cap
(:mod:`api.teacher_check`) word their limits the same way, and neither module should import the
other for it.
"""

from __future__ import annotations


def format_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps the number at least 1 (3 digits)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:g} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
