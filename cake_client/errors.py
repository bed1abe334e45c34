"""Exceptions of the client: one class per problem ``code`` of the REST API, plus transport ones.

The service answers every error with an RFC 9457 problem document carrying a machine-readable
``code`` (API.md, "Conventions"). Mapping each code to its own class lets callers write
``except NotFound:`` instead of comparing strings, while ``CakeAPIError`` keeps every field of
the document for the cases a class does not capture. Anything that is not an answer of the
service (refused connection, DNS failure, timeouts after every retry) is ``ServiceUnreachable``,
so "the service said no" and "the service could not be asked" never look alike.
"""

from __future__ import annotations

from typing import Any

from cake_client._retry_after import parse_retry_after


class CakeError(Exception):
    """Base of every exception this package raises."""


class CakeAPIError(CakeError):
    """The service answered with an error (a problem document, or a bare error status).

    Attributes:
        status: the HTTP status code.
        code: the problem's machine-readable ``code`` (``not_found``, ``validation_error``, …).
        title: the HTTP status phrase the service sent.
        detail: what went wrong, written for a person.
        errors: per-field problems ``[{"loc": [...], "msg": "..."}]`` (validation only).
        raw: the whole problem document as received (unknown members included).
        headers: the response headers (e.g. ``Retry-After``).
    """

    #: The ``code`` a subclass stands for; the base class takes any.
    default_code: str = "error"

    def __init__(
        self,
        status: int,
        code: str | None = None,
        title: str = "",
        detail: str = "",
        errors: list[dict[str, Any]] | None = None,
        *,
        raw: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.status = status
        self.code = code or self.default_code
        self.title = title
        self.detail = detail or title or f"HTTP {status}"
        self.errors = list(errors or [])
        self.raw = dict(raw or {})
        self.headers = dict(headers or {})
        self.method = method
        self.url = url
        super().__init__(self.detail)

    def __str__(self) -> str:
        return f"{self.detail} ({self.code}, HTTP {self.status})"

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status}, code={self.code!r}, detail={self.detail!r})"


class ValidationError(CakeAPIError):
    """422 ``validation_error``: a field of the request is wrong; ``errors`` names it."""

    default_code = "validation_error"


class TeacherInvalid(CakeAPIError):
    """422 ``teacher_invalid``: the uploaded file is not a usable TorchScript classifier."""

    default_code = "teacher_invalid"


class DatasetInvalid(CakeAPIError):
    """422 ``dataset_invalid``: the uploaded ``.npz`` lacks ``x``/``y`` or has bad values."""

    default_code = "dataset_invalid"


class Unauthorized(CakeAPIError):
    """401 ``unauthorized``: no API key, or one the service does not know."""

    default_code = "unauthorized"


class NotFound(CakeAPIError):
    """404 ``not_found``: no such object (or it belongs to another tenant)."""

    default_code = "not_found"


class Conflict(CakeAPIError):
    """409 ``conflict``: the object's state forbids it (e.g. downloading an unfinished job)."""

    default_code = "conflict"


class PayloadTooLarge(CakeAPIError):
    """413 ``payload_too_large``: the upload exceeds the service's ``CAKE_MAX_UPLOAD_BYTES``."""

    default_code = "payload_too_large"


class RateLimited(CakeAPIError):
    """429 ``rate_limited`` that outlasted the retries; ``retry_after`` is the server's hint."""

    default_code = "rate_limited"

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))


class NotReady(CakeAPIError):
    """503 ``not_ready``: a dependency of the service (database, broker, store) is down."""

    default_code = "not_ready"


class ServerError(CakeAPIError):
    """5xx ``internal`` (or any other 5xx) that outlasted the retries."""

    default_code = "internal"


class ServiceUnreachable(CakeError):
    """No answer from the service after every retry: refused, unresolvable, timed out."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class ChecksumMismatch(CakeError):
    """A downloaded artifact's SHA-256 differs from the one in the job's artifact list."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{name}: downloaded file has sha256 {actual[:12]}…, the artifact list says "
            f"{expected[:12]}…; the file was discarded"
        )
        self.name = name
        self.expected = expected
        self.actual = actual


class ArtifactUnavailable(CakeError):
    """A succeeded job has no such artifact, so nothing was downloaded.

    ``student.onnx`` is absent when the ONNX export failed its check, ``student.int8.onnx``
    when int8 quantization lost too much agreement with the teacher: ``reason`` is what the
    job's ``manifest.json`` says (its ``deployment`` section), ``available`` what it has.
    """

    def __init__(self, job_id: str, name: str, reason: str, available: list[str]) -> None:
        super().__init__(
            f"job {job_id} has no {name}: {reason} (its artifacts: {', '.join(available)})"
        )
        self.job_id = job_id
        self.name = name
        self.reason = reason
        self.available = list(available)


class WaitTimeout(CakeError, TimeoutError):
    """``Job.wait(timeout=...)`` ran out of time; the job keeps running on the service."""

    def __init__(self, job_id: str, timeout: float, last: Any = None) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g} s")
        self.job_id = job_id
        self.timeout = timeout
        #: The last :class:`~cake_client.models.Job` seen, if any.
        self.last = last


_BY_CODE: dict[str, type[CakeAPIError]] = {
    cls.default_code: cls
    for cls in (
        ValidationError,
        TeacherInvalid,
        DatasetInvalid,
        Unauthorized,
        NotFound,
        Conflict,
        PayloadTooLarge,
        RateLimited,
        NotReady,
        ServerError,
    )
}

_BY_STATUS: dict[int, type[CakeAPIError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: NotReady,
}


def error_class(status: int, code: str | None) -> type[CakeAPIError]:
    """The class for a problem: by ``code`` when known, else by status."""
    if code and code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return CakeAPIError
