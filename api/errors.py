"""RFC 9457 problem documents for every error the API returns.

Every error leaves the service as ``application/problem+json`` with ``type``, ``title``,
``status``, ``detail`` and a machine-readable ``code`` from API.md's vocabulary, plus
``errors: [{loc, msg}]`` for validation problems. The catch-all handler logs the exception and
answers a generic 500, so no stack trace or server path ever reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cake_core.errors import DatasetInvalidError, SpecError, TeacherInvalidError

log = logging.getLogger("cake.api")

PROBLEM_CONTENT_TYPE = "application/problem+json"
# A URN, not a URL: the problem types are named, not served (RFC 9457 allows either).
PROBLEM_TYPE_BASE = "urn:cake-distill:problem:"

Loc = list[str | int]

# Codes for plain HTTP errors raised by Starlette/FastAPI themselves (unknown route, wrong method).
_STATUS_CODES: dict[int, str] = {
    400: "validation_error",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error",
    429: "rate_limited",
    503: "not_ready",
}


class ApiError(Exception):
    """An error the API answers on purpose, rendered as a problem document.

    Raised anywhere in request handling (routes, helpers running in the thread pool); the
    exception handler turns it into the response, so helpers need not build responses.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = headers or {}
        self.extra = extra or {}


def not_found(kind: str, object_id: str) -> ApiError:
    """The one 404 for unknown ids (and, with API keys, for other tenants' ids)."""
    return ApiError(404, "not_found", f"no {kind} with id {object_id!r}")


def conflict(detail: str) -> ApiError:
    return ApiError(409, "conflict", detail)


def validation_error(loc: Loc, msg: str, detail: str | None = None) -> ApiError:
    """A 422 about one field: ``loc`` as in FastAPI (``["body", "synthesis", "groups"]``)."""
    where = ".".join(str(p) for p in loc[1:]) if loc and loc[0] in ("body", "query") else ""
    text = detail or (f"{where}: {msg}" if where else msg)
    return ApiError(422, "validation_error", text, errors=[{"loc": list(loc), "msg": msg}])


def spec_error(exc: SpecError, prefix: Loc) -> ApiError:
    """Turn the engine's SpecError (dotted ``field``) into a 422 whose ``loc`` names the field."""
    loc: Loc = [*prefix, *exc.field.split(".")]
    return validation_error(loc, exc.reason, detail=exc.message)


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """Build a problem+json response (used by handlers and by routes that return directly)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = list(errors)
    if extra:
        body.update({k: v for k, v in extra.items() if k not in body})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


def _loc(raw: Sequence[Any]) -> Loc:
    return [p if isinstance(p, int) else str(p) for p in raw]


def _validation_msg(err: dict[str, Any]) -> str:
    """FastAPI's messages, with the offending field name for unknown fields."""
    if err.get("type") == "extra_forbidden":
        return "unknown field"
    if err.get("type") == "json_invalid":
        return "body is not valid JSON: " + str(err.get("ctx", {}).get("error", err.get("msg")))
    return str(err.get("msg", "invalid value"))


async def _handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return problem(
        exc.status,
        exc.code,
        exc.detail,
        instance=request.url.path,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": _loc(e.get("loc", ())), "msg": _validation_msg(e)} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"][1:]) or "request"
    detail = f"{where}: {first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return problem(422, "validation_error", detail, instance=request.url.path, errors=errors)


async def _handle_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "internal" if exc.status_code >= 500 else "error")
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no resource at {request.method} {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return problem(exc.status_code, code, detail, instance=request.url.path, headers=headers)


async def _handle_spec(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError)
    return await _handle_api_error(request, spec_error(exc, ["body"]))


async def _handle_teacher(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TeacherInvalidError)
    return problem(422, "teacher_invalid", exc.message, instance=request.url.path)


async def _handle_dataset(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DatasetInvalidError)
    return problem(422, "dataset_invalid", exc.message, instance=request.url.path)


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Log everything server-side; tell the client nothing about the internals.

    An object store that stayed unreachable through its retries is a 503 the client may retry,
    like an unreachable database, not a 500.
    """
    from cake_shared.storage import is_transient

    if is_transient(exc):
        log.warning(
            "object store unavailable in %s %s: %s: %s",
            request.method, request.url.path, type(exc).__name__, exc,
        )  # fmt: skip
        return problem(
            503,
            "not_ready",
            "the object store is unavailable; try again shortly",
            instance=request.url.path,
            headers={"Retry-After": "5"},
        )
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return problem(
        500,
        "internal",
        "an internal error occurred; the server log has the details",
        instance=request.url.path,
    )


def install_handlers(app: FastAPI) -> None:
    """Register every handler; the catch-all goes last and covers anything unexpected."""
    app.add_exception_handler(ApiError, _handle_api_error)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(SpecError, _handle_spec)
    app.add_exception_handler(TeacherInvalidError, _handle_teacher)
    app.add_exception_handler(DatasetInvalidError, _handle_dataset)
    app.add_exception_handler(Exception, _handle_unexpected)
