"""Streaming multipart uploads and the parsing of their form fields.

Why not ``request.form()``: Starlette spools each file to a temporary file but has no cap on a
file's size while it streams, so a 100 GB upload would fill the disk before any check ran. Here
the body is fed chunk by chunk to python-multipart's streaming parser; file parts go to a
temporary file (written and hashed off the event loop, in ~1 MiB batches) and the size cap is
checked on every chunk, so the request fails with 413 the moment it is exceeded and nothing is
stored. Memory stays bounded by the batch size whatever the file size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import ApiError, validation_error
from api.sizes import format_bytes
from cake_core.errors import SpecError
from cake_core.shapes import parse_input_shape

FLUSH_BYTES = 1 << 20
MAX_TEXT_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
_MULTIPART_SLACK = 1 << 20  # headers, boundaries and text parts on top of the file cap


def upload_prefix() -> str:
    """``upload-<host>-<pid>-``: names the process writing a temporary upload file, so that a
    restarted API can delete at once what a crashed one left half-written (``api.main``)."""
    return f"upload-{socket.gethostname()}-{os.getpid()}-"


def upload_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a temporary upload file named by :func:`upload_prefix`, else None."""
    parts = name.rsplit("-", 2)
    if len(parts) != 3 or not name.startswith("upload-"):
        return None
    host, pid = parts[0].removeprefix("upload-"), parts[1]
    if not host or not pid.isdigit() or not parts[2]:
        return None
    return host, int(pid)


def too_large(max_bytes: int, what: str = "the upload") -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"{what} is larger than the limit of {format_bytes(max_bytes)} ({max_bytes} bytes; "
        "CAKE_MAX_UPLOAD_BYTES)",
    )


@dataclass
class UploadedFile:
    """A file part on local disk, with its size and SHA-256 computed while it streamed."""

    name: str
    filename: str | None
    path: Path
    size: int
    sha256: str


@dataclass
class _FilePart:
    name: str
    filename: str | None
    path: Path
    max_bytes: int
    fh: Any
    digest: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0

    def feed(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise too_large(self.max_bytes, f"form part {self.name!r}")
        self.pending.append(data)
        self.pending_bytes += len(data)

    def flush(self) -> None:
        """Write and hash the pending chunks (runs in a worker thread)."""
        if not self.pending:
            return
        block = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        self.fh.write(block)
        self.digest.update(block)


@dataclass
class _TextPart:
    name: str
    data: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_TEXT_BYTES:
            raise too_large(MAX_TEXT_BYTES, f"form field {self.name!r}")


@dataclass
class MultipartForm:
    """The parsed form: text fields in memory, files on disk. Call :meth:`cleanup` when done."""

    fields: dict[str, str]
    files: dict[str, UploadedFile]

    def content_hash(self) -> str:
        """Hash of the form's *content* (not its bytes: the boundary differs per request)."""
        digest = hashlib.sha256()
        entries = [f"t:{k}={v}" for k, v in self.fields.items()]
        entries += [f"f:{k}={f.sha256}" for k, f in self.files.items()]
        for entry in sorted(entries):
            digest.update(entry.encode() + b"\0")
        return digest.hexdigest()

    def cleanup(self) -> None:
        for upload in self.files.values():
            upload.path.unlink(missing_ok=True)


class _Collector:
    """python-multipart callbacks: route each part to a file or a text buffer."""

    def __init__(
        self,
        file_fields: Collection[str],
        text_fields: Collection[str],
        max_file_bytes: int,
        tmp_dir: Path,
    ) -> None:
        self.file_fields = set(file_fields)
        self.text_fields = set(text_fields)
        self.max_file_bytes = max_file_bytes
        self.tmp_dir = tmp_dir
        self.parts: list[_FilePart | _TextPart] = []
        self.current: _FilePart | _TextPart | None = None
        self.headers: dict[str, bytes] = {}
        self._hfield = bytearray()
        self._hvalue = bytearray()
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.headers = {}
        self.current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hfield += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self._hfield.decode("latin-1").lower()] = bytes(self._hvalue)
        self._hfield.clear()
        self._hvalue.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename_raw = options.get(b"filename")
        filename = filename_raw.decode("utf-8", "replace") if filename_raw is not None else None
        allowed = sorted(self.file_fields | self.text_fields)
        if not name:
            raise validation_error(["body"], "a form part has no name")
        if name not in self.file_fields and name not in self.text_fields:
            raise validation_error(
                ["body", name], f"unknown form part; expected {', '.join(allowed)}"
            )
        if any(p.name == name for p in self.parts):
            raise validation_error(["body", name], "form part given more than once")
        if name in self.file_fields:
            fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix=upload_prefix())
            part: _FilePart | _TextPart = _FilePart(
                name, filename, Path(tmp), self.max_file_bytes, os.fdopen(fd, "wb")
            )
        else:
            part = _TextPart(name)
        self.parts.append(part)
        self.current = part

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.current is not None:
            self.current.feed(data[start:end])

    def on_part_end(self) -> None:
        self.current = None

    def on_end(self) -> None:
        self.ended = True

    def file_parts(self) -> list[_FilePart]:
        return [p for p in self.parts if isinstance(p, _FilePart)]

    def flush(self, threshold: int) -> None:
        for part in self.file_parts():
            if part.pending_bytes >= threshold:
                part.flush()

    def close_all(self) -> None:
        for part in self.file_parts():
            with contextlib.suppress(Exception):
                part.fh.close()

    def discard(self) -> None:
        self.close_all()
        for part in self.file_parts():
            part.path.unlink(missing_ok=True)


async def read_multipart(
    request: Request,
    *,
    file_fields: Collection[str],
    text_fields: Collection[str],
    required: Collection[str],
    max_file_bytes: int,
    tmp_dir: Path,
) -> MultipartForm:
    """Stream a ``multipart/form-data`` body to disk with the cap enforced on every chunk.

    Raises ApiError: 415 when the body is not multipart, 413 as soon as a part exceeds its cap
    (the temporary files are deleted), 422 for unknown, repeated, missing or malformed parts.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(
            415,
            "unsupported_media_type",
            "expected a multipart/form-data body (curl -F 'file=@model.pt' ...)",
        )
    declared = request.headers.get("content-length")
    total_cap = max_file_bytes * max(1, len(file_fields)) + _MULTIPART_SLACK
    if declared is not None and declared.isdigit() and int(declared) > total_cap:
        raise too_large(max_file_bytes)

    tmp_dir.mkdir(parents=True, exist_ok=True)
    collector = _Collector(file_fields, text_fields, max_file_bytes, tmp_dir)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            received += len(chunk)
            if received > total_cap:
                raise too_large(max_file_bytes)
            try:
                parser.write(chunk)
            except ApiError:
                raise
            except Exception:
                raise validation_error(["body"], "the multipart body is malformed") from None
            if any(p.pending_bytes >= FLUSH_BYTES for p in collector.file_parts()):
                await anyio.to_thread.run_sync(collector.flush, FLUSH_BYTES)
        parser.finalize()
        if not collector.ended:
            raise validation_error(["body"], "the multipart body is incomplete (truncated upload?)")
        await anyio.to_thread.run_sync(collector.flush, 0)
    except BaseException:
        await anyio.to_thread.run_sync(collector.discard)
        raise
    collector.close_all()

    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    for part in collector.parts:
        if isinstance(part, _FilePart):
            files[part.name] = UploadedFile(
                part.name, part.filename, part.path, part.size, part.digest.hexdigest()
            )
        else:
            try:
                fields[part.name] = part.data.decode("utf-8")
            except UnicodeDecodeError:
                form = MultipartForm(fields, files)
                await anyio.to_thread.run_sync(form.cleanup)
                raise validation_error(["body", part.name], "not valid UTF-8 text") from None
    form = MultipartForm(fields, files)
    missing = [name for name in required if name not in fields and name not in files]
    if missing:
        await anyio.to_thread.run_sync(form.cleanup)
        raise ApiError(
            422,
            "validation_error",
            f"{missing[0]}: form part is required",
            errors=[{"loc": ["body", name], "msg": "form part is required"} for name in missing],
        )
    return form


# --------------------------------------------------------------------------------------------
# form fields
# --------------------------------------------------------------------------------------------


class _NonFinite:
    """Stands in for NaN/Infinity while parsing, so the error can name where it was."""

    def __init__(self, token: str) -> None:
        self.token = token


def load_json(raw: str | bytes, loc: list[str | int]) -> Any:
    """``json.loads`` refusing ``NaN``, ``Infinity``, ``-Infinity`` and ``1e999``, naming the field.

    Python's json accepts them although JSON has no such values; a NaN would pass range checks
    (every comparison is false), and one in stored metadata would make every later response
    that echoes it unserialisable. Raises ``json.JSONDecodeError``/``UnicodeDecodeError`` for
    malformed input (the caller words that), ApiError 422 naming the field for a non-finite
    number, and for nesting past ``MAX_JSON_DEPTH`` or the parser's recursion limit.
    """
    try:
        value = json.loads(raw, parse_constant=_NonFinite, parse_float=_parse_float)
    except RecursionError:
        raise validation_error(loc, "the JSON is nested too deeply") from None
    found = _find_non_finite(value, [])
    if found is not None:
        problem, where = found
        raise validation_error([*loc, *where], problem)
    return value


def _parse_float(token: str) -> float | _NonFinite:
    """A JSON number; one beyond a float's range (``1e999``) would silently become Infinity."""
    value = float(token)
    return value if math.isfinite(value) else _NonFinite(token[:30])


def _find_non_finite(value: Any, where: list[str | int]) -> tuple[str, list[str | int]] | None:
    """The first NaN/Infinity, or nesting past ``MAX_JSON_DEPTH``, and where it is.

    The depth cap keeps stored metadata echoable: a document nested nearly as deep as the
    parser allows would overflow the encoder's recursion limit when a response embeds it.
    """
    stack: list[tuple[Any, list[str | int]]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _NonFinite):
            return f"{item.token} is not a finite number", path
        if len(path) > MAX_JSON_DEPTH and isinstance(item, dict | list):
            return f"nested more than {MAX_JSON_DEPTH} levels deep", path[:MAX_JSON_DEPTH]
        if isinstance(item, dict):
            stack.extend((v, [*path, k]) for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, [*path, i]) for i, v in reversed(list(enumerate(item))))
    return None


def parse_input_shape_field(text: str, loc: list[str | int]) -> list[int]:
    """The ``input_shape`` part, read by the engine's shape parser in the service's strict
    grammar (a JSON array of positive ints, ``[1,28,28]``, or ``1,28,28``; broken JSON such as
    ``[13,`` is refused) with the engine's bounds; any problem is a 422 naming the field.
    """
    try:
        return list(parse_input_shape(text, strict=True))
    except SpecError as exc:
        raise validation_error(loc, exc.reason) from None


def parse_int_field(text: str | None, loc: list[str | int], minimum: int) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise validation_error(loc, "must be an integer") from None
    if value < minimum:
        raise validation_error(loc, f"must be at least {minimum}")
    return value


def parse_name_field(text: str | None, loc: list[str | int]) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if len(text) > 256:
        raise validation_error(loc, "must be at most 256 characters")
    return text or None
