"""Structural checks on an untrusted teacher file, before torch ever reads it.

A teacher upload is first checked as a file, without loading it: :func:`sniff_archive` tells
the common mistakes (a ``torch.save`` checkpoint, a truncated upload, a text file) apart with a
precise message and keeps obviously hostile zips (members past the end of the file, zip bombs)
from the C++ reader; :func:`_scan_code` refuses TorchScript source that calls a file-system
operator before :func:`torch.jit.load` compiles it. :func:`file_sha256` fingerprints the file.
These checks read bytes only, so this module imports no torch and can be tested and reused
apart from the loading and probing in :mod:`cake_core.teacher`.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import zipfile
import zlib

from cake_core.errors import TeacherInvalidError
from cake_core.zipguard import (
    UnsafeZipError,
    ZipLimits,
    check_declared_sizes,
    open_zip,
)

_CHUNK = 1 << 20
_SNIFF_BYTES = 512
_EXPORT_HINT = "export the model with torch.jit.save(torch.jit.script(model), path)"

# A legacy (pre-zip, torch < 1.6) torch.save file is a pickle whose first object is this magic
# number, pickled as a LONG1 opcode: 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

# A TorchScript archive is read from memory by the C++ reader. torch.jit.save stores tensors and
# pickles uncompressed and deflates only the code files (about 2-4x), so declared sizes far
# beyond the file size mean a zip bomb: both the total and each compressed member are bounded.
# A real archive has a few entries per tensor and code file, far below the entry cap.
_ZIP_LIMITS = ZipLimits(
    max_entries=100_000,
    max_expansion=64,
    expansion_floor=64 << 20,
    max_member_ratio=100,
    member_floor=1 << 20,
)

# TorchScript operators that touch the file system: ``torch.from_file`` maps any readable file
# into a tensor (whose bytes a model could raise as its error message, i.e. hand back to the
# uploader), ``torch.save`` writes a file anywhere. A classifier needs neither. The source of an
# archive is scanned for them before loading (``__setstate__`` code runs during the load), and
# the loaded graph after. TorchScript has no sockets, subprocesses or imports at all.
_FORBIDDEN_OPS = frozenset({"aten::from_file", "aten::save", "debugprims::load_tensor"})
_FORBIDDEN_SOURCE = re.compile(r"\bfrom_file\b|\bload_tensor\b|\b(?:torch|aten)\s*\.\s*save\b")
_MAX_CODE_BYTES = 16 << 20

# Protocol 0/1 pickles (no PROTO opcode) start with a GLOBAL, MARK or EMPTY_* opcode; protocol 0
# is plain ASCII, so without this check it would be called "a text file".
_OLD_PICKLE = re.compile(
    rb"^(?:c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n|\((?:dp|lp|t|S'|V|I\d)|[}\]]q\x00)"
)


def sniff_archive(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` is structurally a TorchScript archive, without loading it.

    Runs before :func:`torch.jit.load` so that common mistakes get an actionable message
    (torch's own errors talk about miniz internals) and so the C++ reader never sees a file that
    is plainly not an archive. Only the first bytes and the zip central directory are read;
    member contents are never read into memory.

    Raises:
        TeacherInvalidError: the file is missing, empty, not a zip, a ``torch.save`` checkpoint,
            a ``torch.export`` archive, truncated or corrupt.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TeacherInvalidError("the teacher file does not exist") from None
    except OSError as exc:
        raise TeacherInvalidError(
            f"the teacher file cannot be read ({exc.strerror or 'I/O error'})"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise TeacherInvalidError("the teacher is not a regular file")
    size = st.st_size
    if size == 0:
        raise TeacherInvalidError(f"the teacher file is empty: {_EXPORT_HINT}")

    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise TeacherInvalidError(
            f"the teacher file cannot be read ({exc.strerror or 'I/O error'})"
        ) from None

    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise TeacherInvalidError(_describe_non_zip(head))

    corrupt = TeacherInvalidError(
        "the file starts like a zip archive but is truncated or corrupt (its central "
        "directory cannot be read); upload the complete file written by torch.jit.save"
    )
    try:
        # The declared entry count is read first, so an archive declaring millions of entries
        # is refused before zipfile builds an object for each of them.
        with open_zip(path, _ZIP_LIMITS) as zf:
            infos = zf.infolist()
    except UnsafeZipError as exc:
        raise TeacherInvalidError(_unsafe_zip_message(exc)) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error):
        raise corrupt from None
    _check_zip_entries(infos, size)
    try:
        check_declared_sizes(infos, size, _ZIP_LIMITS)
    except UnsafeZipError as exc:
        raise TeacherInvalidError(_unsafe_zip_message(exc)) from None


def _unsafe_zip_message(exc: UnsafeZipError) -> str:
    """What the zip guard found, said for a teacher file."""
    if exc.kind == "entries":
        return (
            f"the archive declares {exc.declared} entries; a TorchScript archive has far fewer "
            f"(at most {exc.limit} are accepted), so the file is corrupt or malicious"
        )
    if exc.kind == "member" and exc.member is not None:
        return (
            f"the archive entry {_member(exc.member)} expands from {exc.compressed} to "
            f"{exc.declared} bytes (a zip bomb?); TorchScript archives compress at most a few "
            "times, so the file is corrupt or malicious"
        )
    return (
        f"the archive declares {exc.declared} bytes of uncompressed data in a {exc.size}-byte "
        "file; TorchScript archives are stored uncompressed, so the file is corrupt or malicious"
    )


def _describe_non_zip(head: bytes) -> str:
    """Say what a file that is not a zip archive most likely is, and how to fix it."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2-5
        if head[2 : 2 + len(_LEGACY_TORCH_MAGIC)] == _LEGACY_TORCH_MAGIC:
            return (
                "file is a legacy torch.save checkpoint (pre-1.6 format), not a TorchScript "
                f"archive: load the model in Python, then {_EXPORT_HINT}"
            )
        return f"file is a pickle, not a TorchScript archive: {_EXPORT_HINT}"
    if _OLD_PICKLE.match(head):
        return (
            "file is a pickle (protocol 0 or 1), not a TorchScript archive; pickles are never "
            f"loaded because they can run code: {_EXPORT_HINT}"
        )
    if len(head) >= 262 and head[257:262] == b"ustar":
        return (
            "file is a tar archive (a legacy torch.save checkpoint?), not a TorchScript "
            f"archive: {_EXPORT_HINT}"
        )
    if head.startswith(b"\x89HDF"):
        return f"file is an HDF5 file (a Keras model?), not a TorchScript archive: {_EXPORT_HINT}"
    if head.startswith(b"\x1f\x8b"):
        return "file is gzip-compressed, not a TorchScript archive: upload the .pt file itself"
    if len(head) >= 10 and head[8:10] == b'{"':
        return (
            "file looks like a safetensors file (weights only), not a TorchScript archive: "
            f"{_EXPORT_HINT}"
        )
    if _looks_like_text(head):
        return f"file is a text file, not a TorchScript archive: {_EXPORT_HINT}"
    return f"file is not a TorchScript archive (unrecognised binary data): {_EXPORT_HINT}"


def _looks_like_text(head: bytes) -> bool:
    """Heuristic: no NUL bytes and valid UTF-8 (allowing a multi-byte char cut at the end)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _check_zip_entries(infos: list[zipfile.ZipInfo], size: int) -> None:
    """Validate the central directory of a zip that should be a TorchScript archive.

    Torch's reader takes the archive prefix from the first entry's name and looks up every record
    as ``<prefix>/<record>``, so the check does the same. Declared sizes (zip bombs) are
    checked after this, by the shared zip guard.
    """
    if not infos:
        raise TeacherInvalidError(
            f"file is an empty zip archive, not a TorchScript archive: {_EXPORT_HINT}"
        )
    names = [info.filename for info in infos]
    _check_member_names(infos)
    prefix = names[0].split("/", 1)[0] + "/" if "/" in names[0] else ""
    members = {n[len(prefix) :] for n in names if prefix and n.startswith(prefix)}
    has_data = "data.pkl" in members
    has_constants = "constants.pkl" in members
    has_code = any(m.startswith("code/") for m in members)

    if not (has_data and has_constants and has_code):
        if "archive_format" in members or any(m.startswith("models/") for m in members):
            raise TeacherInvalidError(
                f"file is a torch.export (.pt2) archive, not a TorchScript archive: {_EXPORT_HINT}"
            )
        if ".data/extern_modules" in members:
            raise TeacherInvalidError(
                f"file is a torch.package archive, not a TorchScript archive: {_EXPORT_HINT}"
            )
        if has_data:
            raise TeacherInvalidError(
                "file is a torch.save checkpoint (a state dict or pickled model), not a "
                f"TorchScript archive: {_EXPORT_HINT}"
            )
        raise TeacherInvalidError(
            "file is a zip archive but not a TorchScript archive (no data.pkl, constants.pkl "
            f"and code/ entries): {_EXPORT_HINT}"
        )

    for info in infos:
        if info.flag_bits & 0x1:
            raise TeacherInvalidError(
                "the archive contains encrypted entries; TorchScript archives are never encrypted"
            )
        if info.header_offset + info.compress_size > size:
            raise TeacherInvalidError(
                "the archive is corrupt: an entry extends past the end of the file (truncated "
                "upload?)"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise TeacherInvalidError(
                f"the archive is corrupt or malicious: the stored entry {_member(info)} declares "
                f"{info.file_size} bytes but holds {info.compress_size}"
            )


def _member(info: zipfile.ZipInfo) -> str:
    """An entry's name for a message: quoted, printable, at most 60 characters."""
    name = info.filename if len(info.filename) <= 60 else info.filename[:57] + "..."
    return ascii(name)


def _check_member_names(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse names that no torch.jit.save writes and that would escape an extraction folder.

    Torch reads members by name from memory and never extracts them, but the archive is also
    stored and may be unpacked by other tools; and a name like ``../x`` only ever comes from a
    crafted file. Names are checked on the raw central-directory name, before zipfile's
    normalisation.
    """
    seen: set[str] = set()
    for info in infos:
        raw = getattr(info, "orig_filename", info.filename)
        parts = raw.replace("\\", "/").split("/")
        bad = (
            raw.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", raw) is not None
            or ".." in parts
            or "\\" in raw
            or any(ord(ch) < 32 for ch in raw)
        )
        if bad:
            raise TeacherInvalidError(
                f"the archive contains an unsafe entry name {raw[:60]!a} (absolute, with "
                "'..', a backslash or control characters); torch.jit.save never writes such "
                "names, so the file is corrupt or malicious"
            )
        if raw in seen:
            raise TeacherInvalidError(
                f"the archive contains the entry {raw[:60]!a} twice; the file is corrupt "
                "or malicious"
            )
        seen.add(raw)


def _file_access_error(what: str) -> TeacherInvalidError:
    return TeacherInvalidError(
        f"the model's code accesses files ({what}); a teacher may only compute on its input, "
        "so torch.from_file, torch.save and the like are refused"
    )


def _scan_code(path: str | os.PathLike[str]) -> None:
    """Refuse an archive whose TorchScript source calls a file-system operator.

    Runs before :func:`torch.jit.load`, which compiles this source and runs any
    ``__setstate__`` in it. Only the ``code/`` members are read (sizes were bounded by
    :func:`sniff_archive`; all of them together at most ``_MAX_CODE_BYTES``).
    """
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if "code" not in parts[:2] or not info.filename.endswith(".py"):
                continue
            total += info.file_size
            if total > _MAX_CODE_BYTES:
                raise TeacherInvalidError(
                    f"the archive holds more than {_MAX_CODE_BYTES >> 20} MiB of TorchScript "
                    "code; the file is corrupt or malicious"
                )
            try:
                text = zf.read(info).decode("utf-8", "replace")
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error):
                raise TeacherInvalidError(
                    f"the archive entry {_member(info)} is corrupt (truncated upload?)"
                ) from None
            match = _FORBIDDEN_SOURCE.search(text)
            if match:
                raise _file_access_error(re.sub(r"\s+", "", match.group(0)))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB chunks so large teachers never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
