"""Downloading a job's artifacts safely: into a temporary file beside the target, hashed on the
way, resumed with ``Range`` after a dropped connection, and renamed into place only when the
SHA-256 matches.

Split from :mod:`cake_client.client` (the typed endpoint methods) because the resume and
checksum rules are a protocol of their own; ``Jobs.download`` delegates here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import httpx

from cake_client._http import Transport
from cake_client.errors import ChecksumMismatch, ServiceUnreachable
from cake_client.multipart import ProgressCallback


def etag_sha(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


def _new_part_file(target: Path) -> tuple[int, Path]:
    """A new, empty ``.<name>.<random>.part`` beside ``target``, opened for writing.

    Created with mode 0666 less the umask, as ``open()`` (curl -o, cp) would: a downloaded model
    must be readable where the user's other files are (mkstemp would make it 0600).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def download(
    transport: Transport,
    job_id: str,
    name: str,
    path: str | os.PathLike[str],
    expected_sha256: str | None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Download artifact ``name`` to ``path`` (a file, or a folder to put it in); see
    ``Jobs.download``. ``expected_sha256``: the artifact list's hash (None: the ETag's)."""
    target = Path(path)
    if target.is_dir():
        target = target / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_part_file(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            actual, etag = _fetch(transport, job_id, name, fh, on_progress)
        wanted = expected_sha256 if expected_sha256 is not None else etag_sha(etag)
        if wanted and actual != wanted:
            raise ChecksumMismatch(name, wanted, actual)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _fetch(
    transport: Transport,
    job_id: str,
    name: str,
    fh: Any,
    on_progress: ProgressCallback | None,
) -> tuple[str, str | None]:
    """Stream the artifact into ``fh``; returns (sha256 hex, ETag)."""
    digest = hashlib.sha256()
    written = 0
    etag: str | None = None
    failures = 0
    while True:
        headers: dict[str, str] = {}
        if written and etag:
            headers = {"Range": f"bytes={written}-", "If-Range": etag}
        response = transport.send(
            "GET", f"/v1/jobs/{job_id}/artifacts/{name}", headers=headers, stream=True
        )
        try:
            if response.status_code != 206 and written:
                fh.seek(0)
                fh.truncate()
                digest, written = hashlib.sha256(), 0
            etag = response.headers.get("etag") or etag
            length = response.headers.get("content-length")
            total = written + int(length) if length and length.isdigit() else 0
            for chunk in response.iter_bytes():
                fh.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                if on_progress is not None:
                    on_progress(written, max(total, written))
            return digest.hexdigest(), etag
        except httpx.TransportError as exc:
            if failures >= transport.max_retries:
                raise ServiceUnreachable(
                    f"download of {name} broke off after {written} bytes: {exc}",
                    url=transport.base_url,
                ) from None
            transport.sleep(transport.backoff(failures))
            failures += 1
        finally:
            response.close()
