"""HTTP plumbing: retries with backoff, problem documents to exceptions.

The multipart body of uploads is :mod:`cake_client.multipart`; the event stream is read by
httpx-sse (:meth:`cake_client.client.Jobs.stream_events`).

Retry rules, and why:

- Only requests that are safe to repeat are retried: GET/HEAD/PUT/DELETE/OPTIONS, POSTs that
  carry an ``Idempotency-Key`` (the service replays the first result for the same key), and
  POSTs the caller marks as naturally idempotent (``cancel``). A plain POST that reached the
  service may have created something, so it is never sent twice.
- A refused connection or a connect timeout means the request never reached the service, so
  even an unsafe request is retried then.
- Retried answers: 429 and 5xx. ``Retry-After`` (seconds or an HTTP date) wins over the
  computed delay; otherwise the delay grows exponentially with "equal jitter" (half fixed, half
  random), so many clients that failed together do not come back together. That delay is the
  service's own policy, :func:`cake_shared.retry.backoff_delay` (standard library and tenacity
  only, so the SDK stays light); the loop is the client's, as it retries on HTTP statuses.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from cake_client._retry_after import parse_retry_after
from cake_client.errors import CakeAPIError, ServiceUnreachable, error_class
from cake_shared.retry import backoff_delay

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Retries after the first attempt: the backoff (0.5 s doubling, capped at 30 s, half jittered)
#: then spans 16 to 32 s, longer than an API restart, so callers never see one.
DEFAULT_MAX_RETRIES = 6
SAFE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: The longest ``Retry-After`` the client will sleep for; longer hints are cut to this.
MAX_RETRY_AFTER_S = 120.0


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
# the transport
# --------------------------------------------------------------------------------------------


class Transport:
    """An ``httpx.Client`` plus the retry policy and error mapping shared by all resources.

    Built by :class:`cake_client.Client` only, which passes every setting: the defaults and
    their documentation live in that public constructor alone, so the two cannot drift apart.
    """

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        *,
        backoff_base: float,
        backoff_max: float,
        transport: httpx.BaseTransport | None,
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
        return backoff_delay(attempt + 1, self.backoff_base, self.backoff_max)

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
        return self.decode(self.send(method, path, **kwargs), method, path)

    @staticmethod
    def decode(response: httpx.Response, method: str, path: str) -> Any:
        """The JSON body of a response ``send`` returned (None when empty); a typed error,
        not a ``JSONDecodeError``, when the service sent something else."""
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
