"""The one multipart/form-data encoder of the project: the client's uploads and the service
benchmark's (``bench.service.upload``) send their files through it.

Why not httpx's ``files=``: it reports no progress, and whether it can announce the length
depends on the file object it is given. This body knows its exact length up front (so the
request carries Content-Length, which lets the service refuse an oversized upload before
reading it), reports the bytes handed to the socket to ``on_progress(sent, total)``, and can be
iterated again for a retry (each pass reopens the files), so memory stays one block whatever
the file size.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

#: Bytes read from a file per block handed to httpx.
UPLOAD_CHUNK = 1 << 20

ProgressCallback = Callable[[int, int], None]


@dataclass
class FilePart:
    """A file part: ``name`` is the form field, ``filename`` defaults to the file's name."""

    name: str
    path: Path
    filename: str | None = None
    content_type: str = "application/octet-stream"


@dataclass
class MultipartBody:
    """A multipart/form-data body read from disk in ``UPLOAD_CHUNK`` blocks as httpx sends it:
    text fields first, then the files, in the order given.

    Send it as ``content=body`` with ``Content-Type: body.content_type`` and
    ``Content-Length: str(len(body))``.
    """

    fields: dict[str, str]
    files: list[FilePart]
    on_progress: ProgressCallback | None = None
    boundary: str = field(default_factory=lambda: "cake-" + uuid.uuid4().hex)

    def _field_head(self, name: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        )

    def _file_head(self, part: FilePart) -> bytes:
        filename = (part.filename or part.path.name).replace('"', "%22")
        return (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{part.name}"; filename="{filename}"\r\n'
            f"Content-Type: {part.content_type}\r\n\r\n"
        ).encode()

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        total = len(self._tail())
        for name, value in self.fields.items():
            total += len(self._field_head(name)) + len(value.encode()) + 2
        for part in self.files:
            total += len(self._file_head(part)) + part.path.stat().st_size + 2
        return total

    def __iter__(self) -> Iterator[bytes]:
        total = len(self)
        sent = 0

        def report(n: int) -> None:
            nonlocal sent
            sent += n
            if self.on_progress is not None:
                self.on_progress(sent, total)

        if self.on_progress is not None:
            self.on_progress(0, total)
        for name, value in self.fields.items():
            block = self._field_head(name) + value.encode() + b"\r\n"
            yield block
            report(len(block))
        for part in self.files:
            head = self._file_head(part)
            yield head
            report(len(head))
            fh: BinaryIO
            with open(part.path, "rb") as fh:
                while block := fh.read(UPLOAD_CHUNK):
                    yield block
                    report(len(block))
            yield b"\r\n"
            report(2)
        tail = self._tail()
        yield tail
        report(len(tail))
