"""The object store: one interface, two backends (local disk, S3-compatible via boto3).

Keys are ``/``-separated paths (``teachers/<sha256>``, ``jobs/<id>/artifacts/student.pt``).
Writes are whole-object and atomic on both backends, so a reader never sees half a file.

S3 calls ride out short outages of the store (a restart, a dropped link): a call that fails on a
connection error, a timeout or a 5xx is tried again with exponential backoff (:class:`Retry`)
before the error reaches the caller. How long depends on who waits: workers use
``CAKE_STORE_RETRY_*`` (about a minute by default: a job's store call is worth it), the API
``CAKE_API_STORE_RETRY_*`` (a few seconds, then 503 ``not_ready``: a client that is told to come
back holds nothing meanwhile), and calls whose work the sweeper redoes anyway (deleting a
finished job's checkpoints, the sweeper's rounds) make one try
(:meth:`ObjectStore.with_attempts`). A download cut mid-stream resumes from the byte it stopped
at. What is never retried: a missing object, a refused request (4xx), and
:meth:`ObjectStore.ping` (readiness must answer at once).
"""

from __future__ import annotations

import copy
import heapq
import logging
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from cake_shared.retry import backoff_delay, call_with_retries

if TYPE_CHECKING:
    from cake_shared.settings import Settings

CHUNK = 1 << 20
log = logging.getLogger("cake.store")
T = TypeVar("T")
#: S3 error codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)


@dataclass(frozen=True)
class Retry:
    """How often and how patiently a store call is tried (``CAKE_STORE_RETRY_*`` in workers,
    ``CAKE_API_STORE_RETRY_*`` in the API: :func:`retry_from_settings`,
    :func:`api_retry_from_settings`).

    Try ``n`` (n >= 2) waits ``min(backoff_max_s, backoff_s * 2**(n-2))``, half fixed and half
    random, so workers that lost the store together do not come back together: the project's
    one policy, :func:`cake_shared.retry.backoff_delay`. ``attempts`` counts HTTP requests, as
    botocore itself does not retry (:class:`S3Store`). ``connect_timeout_s`` bounds each try
    against an endpoint that does not answer at all (a refused connection fails at once), so
    that the budget holds there too.
    """

    attempts: int = 7
    backoff_s: float = 1.0
    backoff_max_s: float = 20.0
    connect_timeout_s: float = 5.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed try."""
        return backoff_delay(failures, self.backoff_s, self.backoff_max_s)


def is_transient(exc: BaseException) -> bool:
    """True for failures that say nothing about the request itself: the store could not be
    reached, the connection broke, timed out or ended a body early, or it answered 5xx /
    "slow down"."""
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # upload/download errors wrap it
        seen.add(id(current))
        if isinstance(current, BotoConnectionError | HTTPClientError | ConnectionError):
            return True
        # A body that ended before its Content-Length: the connection closed mid-stream. Newer
        # botocore releases report a cut connection this way rather than as a streaming error.
        if isinstance(current, IncompleteReadError):
            return True
        if isinstance(current, TimeoutError):
            return True
        if isinstance(current, ClientError):
            status = current.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = current.response.get("Error", {}).get("Code")
            return int(status) >= 500 or code in _TRANSIENT_CODES
        if type(current).__name__ == "RetriesExceededError":  # s3transfer, download streams
            return True
        current = (
            current.__cause__ or current.__context__ or getattr(current, "last_exception", None)
        )
    return False


class ObjectNotFound(KeyError):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing shows it: the sweeper needs its age (an upload younger
    than the grace period may be waiting for its row) without a request per object."""

    key: str
    size: int
    #: when the object was last written (UTC)
    modified: datetime


class ObjectStore(ABC):
    @abstractmethod
    def put_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> None: ...

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""

    @abstractmethod
    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream bytes ``[start, end]`` (inclusive ``end``; None = to the end)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        """Up to ``limit`` objects under ``prefix`` whose keys sort after ``start_after``, in
        key order: a walk over a large store in bounded steps (the sweeper's), where
        :meth:`list` would fetch every key at once. Fewer than ``limit`` means the end."""

    @abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached."""

    def with_attempts(self, attempts: int) -> ObjectStore:
        """This store with each call tried at most ``attempts`` times, for work that is redone
        later anyway (a worker deleting a finished job's checkpoints, the sweeper's rounds):
        waiting out an outage there would only hold the caller. Backends without retries
        return themselves."""
        return self

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as fh:
            fh.write(data)
        try:
            self.put_file(key, fh.name)
        finally:
            os.unlink(fh.name)

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_range(key))


class LocalStore(ObjectStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def put_file(self, key: str, path: str | Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_file(self, key: str, path: str | Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(key)
        shutil.copyfile(source, path)

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        with open(path, "rb") as fh:
            fh.seek(start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                block = fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not block:
                    break
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self.root
        return sorted(
            str(p.relative_to(base)).replace(os.sep, "/")
            for p in base.rglob("*")
            if p.is_file()
            and not p.name.startswith(".tmp-")
            and str(p.relative_to(base)).replace(os.sep, "/").startswith(prefix)
        )

    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        """Only the folder that holds ``prefix`` is walked (keys are paths under the root)."""
        folder = prefix.rpartition("/")[0]
        base = self._path(folder) if folder else self.root
        if not base.is_dir():
            return []
        keys = (
            str(p.relative_to(self.root)).replace(os.sep, "/")
            for p in base.rglob("*")
            if not p.name.startswith(".tmp-") and p.is_file()
        )
        chosen = heapq.nsmallest(
            limit, (k for k in keys if k.startswith(prefix) and k > start_after)
        )
        found: list[ObjectInfo] = []
        for key in chosen:
            try:
                stat = self._path(key).stat()
            except FileNotFoundError:  # deleted since the walk
                continue
            found.append(ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)))
        return found

    def ping(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise OSError("local store folder is not writable")


class S3Store(ObjectStore):
    """S3 or an S3-compatible server. Every call but :meth:`ping` goes through :meth:`_retry`.

    botocore's own retries are off (``total_max_attempts=1``; the connect timeout is
    ``retry.connect_timeout_s``): the only retries are :class:`Retry`'s
    (:mod:`cake_shared.retry`), which are configurable and logged. With both layers on, each of
    our tries would hide botocore's tries, and one call on a dead endpoint would make
    ``attempts`` x botocore's requests instead of ``attempts``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        retry: Retry | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.retry = retry or Retry()
        self.sleep: Callable[[float], None] = time.sleep
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=self.retry.connect_timeout_s,
                read_timeout=60,
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """``call()``, tried again after transient failures until the attempts run out."""

        def log_retry(exc: BaseException, delay: float, failures: int) -> None:
            log.warning(
                "object store: %s failed (%s: %s); retrying in %.1f s (try %d of %d)",
                what, type(exc).__name__, exc, delay, failures + 1, self.retry.attempts,
            )  # fmt: skip

        return call_with_retries(
            call,
            attempts=self.retry.attempts,
            retryable=is_transient,
            delay=self.retry.delay,
            sleep=self.sleep,
            on_retry=log_retry,
        )

    def put_file(self, key: str, path: str | Path) -> None:
        self._retry(
            f"upload of {key}",
            lambda: self.client.upload_file(str(path), self.bucket, self._key(key)),
        )

    def get_file(self, key: str, path: str | Path) -> None:
        from botocore.exceptions import ClientError

        try:
            self._retry(
                f"download of {key}",
                lambda: self.client.download_file(self.bucket, self._key(key), str(path)),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise ObjectNotFound(key) from None
            raise

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self._retry(
                f"size of {key}",
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def _open(self, key: str, start: int, end: int | None) -> Any:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            return self._retry(f"read of {key}", lambda: self.client.get_object(**kwargs)["Body"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise ObjectNotFound(key) from None
            raise

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Stream the range; a connection lost mid-stream reopens it at the next byte."""
        position, failures = start, 0
        body = self._open(key, start, end)
        while True:
            try:
                for block in body.iter_chunks(CHUNK):
                    position += len(block)
                    yield block
                return
            except Exception as exc:
                failures += 1
                if failures >= self.retry.attempts or not is_transient(exc):
                    raise
                log.warning("object store: read of %s broke at byte %d (%s); resuming",
                            key, position, type(exc).__name__)  # fmt: skip
                self.sleep(self.retry.delay(failures))
                if end is not None and position > end:
                    return
                body = self._open(key, position, end)

    def delete(self, key: str) -> None:
        self._retry(
            f"delete of {key}",
            lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)),
        )

    def list(self, prefix: str) -> list[str]:
        def listing() -> list[str]:
            keys: list[str] = []
            paginator = self.client.get_paginator("list_objects_v2")
            strip = len(self.prefix) + 1 if self.prefix else 0
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return sorted(keys)

        return self._retry(f"list of {prefix}", listing)

    def list_page(self, prefix: str, start_after: str = "", limit: int = 1000) -> list[ObjectInfo]:
        """``ListObjectsV2`` from ``StartAfter``, as many requests as ``limit`` needs (S3
        answers at most 1,000 keys each); keys come back in S3's order, which is byte order."""
        strip = len(self.prefix) + 1 if self.prefix else 0

        def page() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
            if start_after:
                kwargs["StartAfter"] = self._key(start_after)
            while len(found) < limit:
                kwargs["MaxKeys"] = min(1000, limit - len(found))
                answer = self.client.list_objects_v2(**kwargs)
                for obj in answer.get("Contents", []):
                    modified = obj["LastModified"]
                    if modified.tzinfo is None:
                        modified = modified.replace(tzinfo=UTC)
                    found.append(
                        ObjectInfo(obj["Key"][strip:], int(obj["Size"]), modified.astimezone(UTC))
                    )
                if not answer.get("IsTruncated") or not answer.get("NextContinuationToken"):
                    break
                kwargs["ContinuationToken"] = answer["NextContinuationToken"]
            return found[:limit]

        return self._retry(f"list of {prefix} after {start_after!r}", page)

    def with_attempts(self, attempts: int) -> S3Store:
        """A copy whose calls make at most ``attempts`` tries; it shares this store's client
        (boto3 clients are thread-safe), so it costs no new connection pool."""
        view = copy.copy(self)
        view.retry = replace(self.retry, attempts=max(1, attempts))
        return view

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def store_from_url(
    url: str,
    endpoint_url: str | None = None,
    region: str | None = None,
    retry: Retry | None = None,
) -> ObjectStore:
    """``file:///abs/path`` or a plain path -> :class:`LocalStore`; ``s3://bucket/prefix`` -> S3."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3Store(
            parsed.netloc, parsed.path, endpoint_url=endpoint_url, region=region, retry=retry
        )
    if parsed.scheme in ("file", ""):
        return LocalStore(parsed.path if parsed.scheme == "file" else url)
    raise ValueError(f"unsupported store URL scheme {parsed.scheme!r}; use file:// or s3://")


def store_from_settings(settings: Settings, retry: Retry | None = None) -> ObjectStore:
    """The object store that ``settings`` name, with ``retry`` (default: the workers' long
    budget, :func:`retry_from_settings`; the API passes :func:`api_retry_from_settings`)."""
    return store_from_url(
        settings.resolved_store_url(),
        settings.s3_endpoint_url,
        settings.s3_region,
        retry or retry_from_settings(settings),
    )


def retry_from_settings(settings: Settings) -> Retry:
    """The workers' :class:`Retry`: ``CAKE_STORE_RETRY_*`` and ``CAKE_STORE_CONNECT_TIMEOUT_S``
    (about a minute of outage by default)."""
    return Retry(
        attempts=settings.store_retry_attempts,
        backoff_s=settings.store_retry_backoff_s,
        backoff_max_s=settings.store_retry_backoff_max_s,
        connect_timeout_s=settings.store_connect_timeout_s,
    )


def api_retry_from_settings(settings: Settings) -> Retry:
    """The API's short :class:`Retry`: ``CAKE_API_STORE_RETRY_*`` and
    ``CAKE_API_STORE_CONNECT_TIMEOUT_S`` (a few seconds by default, then the request answers
    503 and the client comes back, instead of holding a thread and a database slot)."""
    return Retry(
        attempts=settings.api_store_retry_attempts,
        backoff_s=settings.api_store_retry_backoff_s,
        backoff_max_s=settings.api_store_retry_backoff_max_s,
        connect_timeout_s=settings.api_store_connect_timeout_s,
    )
