"""HTTP plumbing: retries with backoff, problem documents to exceptions, streamed multipart.

Retry rules, and why:

- Only requests that are safe to repeat are retried: GET/HEAD/PUT/DELETE/OPTIONS, POSTs that
  carry an ``Idempotency-Key`` (the service replays the first result for the same key), and
  POSTs the caller marks as naturally idempotent (``cancel``). A plain POST that reached the
  service may have created something, so it is never sent twice.
- A refused connection or a connect timeout means the request never reached the service, so
  even an unsafe request is retried then.
- Retried answers: 429 and 5xx. ``Retry-After`` (seconds or an HTTP date) wins over the
  computed delay; otherwise the delay grows exponentially with "equal jitter" (half fixed, half
  random), so many clients that failed together do not come back together.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from cake_client._retry_after import parse_retry_after
from cake_client.errors import CakeAPIError, ServiceUnreachable, error_class

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Retries after the first attempt: the backoff (0.5 s doubling, capped at 30 s, half jittered)
#: then spans 16 to 32 s, longer than an API restart, so callers never see one.
DEFAULT_MAX_RETRIES = 6
SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: The longest ``Retry-After`` the client will sleep for; longer hints are cut to this.
MAX_RETRY_AFTER_S = 120.0
UPLOAD_CHUNK = 1 << 20

ProgressCallback = Callable[[int, int], None]


def new_idempotency_key() -> str:
    """A fresh key for one logical create: reused by its retries, never by another create."""
    return f"cake-client-{uuid.uuid4().hex}"


def normalize_url(url: str | None) -> str:
    """``CAKE_URL``-style input to a base URL: default scheme http, no trailing slash."""
    text = (url or os.environ.get("CAKE_URL") or DEFAULT_URL).strip()
    if "://" not in text:
        text = "http://" + text
    return text.rstrip("/")


def _problem_error(response: httpx.Response) -> CakeAPIError:
    """The typed exception for an error response (the body must have been read)."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        pass
    status = response.status_code
    code = body.get("code") if isinstance(body.get("code"), str) else None
    title = str(body.get("title") or response.reason_phrase or "")
    detail = body.get("detail")
    if not isinstance(detail, str) or not detail:
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        detail = text or title or f"HTTP {status}"
    errors = body.get("errors") if isinstance(body.get("errors"), list) else None
    cls = error_class(status, code)
    return cls(
        status,
        code,
        title,
        detail,
        errors,
        raw=body,
        headers={k.lower(): v for k, v in response.headers.items()},
        method=response.request.method,
        url=str(response.request.url),
    )


# --------------------------------------------------------------------------------------------
# streamed multipart
# --------------------------------------------------------------------------------------------


@dataclass
class FilePart:
    name: str
    path: Path
    filename: str | None = None
    content_type: str = "application/octet-stream"


@dataclass
class MultipartBody:
    """A multipart/form-data body read from disk in 1 MiB blocks as httpx sends it.

    Why not httpx's ``files=``: it gives no progress, and its size peeking depends on the file
    object. This body knows its exact length up front (so the request carries Content-Length,
    which lets the service refuse an oversized upload at once), reports bytes handed to the
    socket to ``on_progress(sent, total)``, and can be iterated again for a retry (each pass
    reopens the files), so memory stays one block whatever the file size.
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


# --------------------------------------------------------------------------------------------
# the transport
# --------------------------------------------------------------------------------------------


class Transport:
    """An ``httpx.Client`` plus the retry policy and error mapping shared by all resources."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "cake-client/0.1",
    ) -> None:
        self.base_url = normalize_url(base_url)
        key = api_key if api_key is not None else os.environ.get("CAKE_API_KEY")
        self.api_key = key or None
        self.timeout = timeout
        self.max_retries = max(0, int(max_retries))
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            self.http = httpx.Client(
                base_url=self.base_url,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                transport=transport,
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise ServiceUnreachable(
                f"invalid service URL {self.base_url!r}: {exc}", url=self.base_url
            ) from None
        #: Test hook and statistics: how many retries this transport has made.
        self.retries_made = 0
        self.sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self.http.close()

    # -- backoff ---------------------------------------------------------------------------------
    def backoff(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds before retry number ``attempt`` (0-based): Retry-After, else jittered exp."""
        if response is not None:
            hinted = parse_retry_after(response.headers.get("retry-after"))
            if hinted is not None:
                return min(hinted, MAX_RETRY_AFTER_S)
        delay = min(self.backoff_max, self.backoff_base * (2**attempt))
        return delay / 2 + random.uniform(0, delay / 2)

    # -- requests --------------------------------------------------------------------------------
    def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        content: Iterable[bytes] | bytes | None = None,
        headers: dict[str, str] | None = None,
        retry_safe: bool | None = None,
        stream: bool = False,
        timeout: httpx.Timeout | float | None = None,
        ok_statuses: Iterable[int] = (),
    ) -> httpx.Response:
        """Send with retries; return a 2xx (or ``ok_statuses``) response, else raise.

        With ``stream=True`` the caller must close the returned response.
        """
        method = method.upper()
        headers = dict(headers or {})
        if retry_safe is None:
            retry_safe = method in SAFE_METHODS or any(
                k.lower() == "idempotency-key" for k in headers
            )
        params = {k: v for k, v in (params or {}).items() if v is not None}
        ok = set(ok_statuses)
        attempt = 0
        while True:
            try:
                request = self.http.build_request(
                    method,
                    path,
                    params=params,
                    json=json_body,
                    content=content,
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
                response = self.http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # The request never reached the service: safe to repeat whatever it was.
                if attempt >= self.max_retries:
                    raise self._unreachable(exc) from None
            except httpx.UnsupportedProtocol as exc:
                raise ServiceUnreachable(
                    f"invalid service URL {self.base_url!r}: {exc}", url=self.base_url
                ) from None
            except httpx.TransportError as exc:
                if not retry_safe or attempt >= self.max_retries:
                    raise self._unreachable(exc) from None
            else:
                status = response.status_code
                if 200 <= status < 300 or status in ok:
                    if stream:
                        return response
                    try:
                        response.read()
                    except httpx.TransportError as exc:
                        if not retry_safe or attempt >= self.max_retries:
                            raise self._unreachable(exc) from None
                        self._pause(attempt, None)
                        attempt += 1
                        continue
                    finally:
                        response.close()
                    return response
                try:
                    response.read()
                except httpx.TransportError:
                    pass
                finally:
                    response.close()
                if status in RETRY_STATUSES and retry_safe and attempt < self.max_retries:
                    self._pause(attempt, response)
                    attempt += 1
                    continue
                raise _problem_error(response)
            self._pause(attempt, None)
            attempt += 1

    def _pause(self, attempt: int, response: httpx.Response | None) -> None:
        self.retries_made += 1
        self.sleep(self.backoff(attempt, response))

    def _unreachable(self, exc: Exception) -> ServiceUnreachable:
        reason = str(exc) or type(exc).__name__
        tries = self.max_retries + 1
        return ServiceUnreachable(
            f"cannot reach the service at {self.base_url} ({reason}; {tries} "
            f"attempt{'s' if tries != 1 else ''})",
            url=self.base_url,
        )

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send and decode the JSON body (None for an empty body, e.g. 204)."""
        response = self.send(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise CakeAPIError(
                response.status_code,
                "invalid_response",
                "",
                f"the service answered {method} {path} with a body that is not JSON",
            ) from None


# --------------------------------------------------------------------------------------------
# Server-Sent Events
# --------------------------------------------------------------------------------------------


@dataclass
class SSEMessage:
    """One dispatched SSE message (the fields of the WHATWG event-stream format)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry_ms: int | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[SSEMessage | None]:
    """SSE lines to messages. Yields ``None`` for comments (heartbeats), so a consumer can check
    a deadline even while nothing but keep-alives arrive."""
    event, data, last_id, retry = "", [], None, None
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or event:
                yield SSEMessage(event or "message", "\n".join(data), last_id, retry)
            event, data = "", []
            continue
        if line.startswith(":"):
            yield None
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            if "\0" not in value:
                last_id = value
        elif name == "retry" and value.isdigit():
            retry = int(value)
    if data:
        yield SSEMessage(event or "message", "\n".join(data), last_id, retry)
