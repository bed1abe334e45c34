"""The one guard against hostile zip archives (teacher files and ``.npz`` data sets).

Both uploads are zips read by something that trusts their directory: torch's C++ reader loads a
TorchScript archive into memory, numpy streams an ``.npz`` member. Before that, the directory
alone shows an archive that would cost far more than its size:

* too many entries: Python's ``zipfile`` builds an object (~0.5 KB) per central-directory
  entry, so the count is read from the end record first (:func:`open_zip`), before ``zipfile``
  parses anything; a 1 GiB upload of empty entries would otherwise take gigabytes;
* a zip bomb: declared (uncompressed) sizes far beyond the file's size, in total or for one
  member (:func:`check_declared_sizes`).

The end record is read here (APPNOTE 4.3.16 and, for zip64, 4.3.14/4.3.15), not through
``zipfile``'s private helpers. Errors are :class:`UnsafeZipError` with the numbers; each caller
words them for its upload (the client sees the teacher's or the data set's own message).
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Literal

__all__ = ["UnsafeZipError", "ZipLimits", "check_declared_sizes", "declared_entries", "open_zip"]

_EOCD = struct.Struct("<4s4H2LH")  # signature, disks, entries here/total, directory size/offset
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_MAX_COMMENT = (1 << 16) - 1


@dataclass(frozen=True)
class ZipLimits:
    """What an archive may declare. ``max_expansion``: declared total over the file size
    (at least ``expansion_floor`` bytes are always allowed); ``max_member_ratio``: one member's
    declared size over its compressed size (None: not checked; ``member_floor`` bytes are
    always allowed)."""

    max_entries: int
    max_expansion: int
    expansion_floor: int
    max_member_ratio: int | None = None
    member_floor: int = 0


class UnsafeZipError(Exception):
    """The directory declares more than :class:`ZipLimits` allow; the numbers say how much.

    ``kind`` is ``"entries"`` (``declared`` entries), ``"member"`` (``member`` expands from
    ``compressed`` to ``declared`` bytes) or ``"total"`` (``declared`` bytes in a file of
    ``size``). ``limit`` is the cap that was exceeded.
    """

    def __init__(
        self,
        kind: Literal["entries", "member", "total"],
        declared: int,
        limit: int,
        *,
        size: int = 0,
        member: zipfile.ZipInfo | None = None,
    ) -> None:
        super().__init__(f"the archive declares {declared} ({kind}), over the limit of {limit}")
        self.kind = kind
        self.declared = declared
        self.limit = limit
        self.size = size
        self.member = member
        self.compressed = member.compress_size if member is not None else 0


def declared_entries(path: str | os.PathLike[str]) -> int | None:
    """The entry count the archive's end record declares (the zip64 record's when there is
    one); None when the file has no end record (not a zip, or truncated).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        tail_start = max(0, size - _EOCD.size - _MAX_COMMENT)
        fh.seek(tail_start)
        tail = fh.read()
        pos = tail.rfind(_EOCD_SIGNATURE)
        if pos == -1 or len(tail) - pos < _EOCD.size:
            return None
        entries = _EOCD.unpack_from(tail, pos)[4]
        locator_at = tail_start + pos - _ZIP64_LOCATOR.size
        if locator_at < _ZIP64_EOCD.size:
            return int(entries)
        fh.seek(locator_at)
        locator = fh.read(_ZIP64_LOCATOR.size)
        if not locator.startswith(_ZIP64_LOCATOR_SIGNATURE):
            return int(entries)
        # The zip64 end record sits just before its locator (as zipfile reads it too).
        fh.seek(locator_at - _ZIP64_EOCD.size)
        record = fh.read(_ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or not record.startswith(_ZIP64_EOCD_SIGNATURE):
            return None
        return int(_ZIP64_EOCD.unpack(record)[7])


def open_zip(path: str | os.PathLike[str], limits: ZipLimits) -> zipfile.ZipFile:
    """Open the archive once its declared entry count is within ``limits.max_entries``.

    Raises:
        UnsafeZipError: too many entries declared (nothing was parsed).
        zipfile.BadZipFile: no end record, or a directory ``zipfile`` cannot read; also
            ``OSError``, ``ValueError``, ``EOFError`` or ``struct.error`` from a corrupt file.
    """
    entries = declared_entries(path)
    if entries is None:
        raise zipfile.BadZipFile("no end of central directory record")
    if entries > limits.max_entries:
        raise UnsafeZipError("entries", entries, limits.max_entries)
    return zipfile.ZipFile(path)


def check_declared_sizes(infos: list[zipfile.ZipInfo], size: int, limits: ZipLimits) -> None:
    """Refuse a directory whose declared sizes make it a zip bomb (see :class:`ZipLimits`).

    Raises:
        UnsafeZipError: ``"member"`` for the first member over its ratio, else ``"total"``.
    """
    if limits.max_member_ratio is not None:
        for info in infos:
            cap = max(limits.max_member_ratio * max(info.compress_size, 1), limits.member_floor)
            if info.file_size > cap:
                raise UnsafeZipError("member", info.file_size, cap, size=size, member=info)
    declared = sum(info.file_size for info in infos)
    cap = max(limits.max_expansion * size, limits.expansion_floor)
    if declared > cap:
        raise UnsafeZipError("total", declared, cap, size=size)
