"""Artifacts of a succeeded job: list and download (ETag, If-None-Match, single Range).

Downloads stream from the object store in 1 MiB blocks (``ObjectStore.iter_range``), so a large
student never sits in the API's memory. Artifacts are immutable once the job succeeded, and the
ETag is their SHA-256, so clients and proxies can cache and resume them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session

from api.conditional import etag_matches
from api.crud import artifacts
from api.deps import SessionDep, TenantDep
from api.errors import ApiError
from api.schemas import ANY_CLIENT_ERROR, ArtifactList, problem_responses
from api.serializers import artifact_out, page
from cake_shared.storage import ObjectStore

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"], responses=ANY_CLIENT_ERROR)

JobId = Annotated[str, Path(alias="id", description="job_… identifier")]
ArtifactName = Annotated[str, Path(description="Artifact name, e.g. student.pt")]

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    },
    206: {"description": "Partial content (Range)"},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    **problem_responses(404, 409, 416),
}


@router.get(
    "/{id}/artifacts",
    response_model=ArtifactList,
    summary="List a job's artifacts",
    responses=problem_responses(404),
)
def list_artifacts(job_id: JobId, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    rows = artifacts.list_artifacts(session, tenant, job_id)
    return page([artifact_out(r) for r in rows], False)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The single range asked for, inclusive; None to ignore the header (serve the whole file).

    Raises ApiError 416 when the range is valid but lies outside the file.
    """
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None or match.group(0) == "bytes=-":
        return None  # malformed or several ranges: RFC 9110 allows ignoring Range
    first, last = match.groups()
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size - 1)


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        416,
        "range_not_satisfiable",
        f"the requested range is outside the file ({size} bytes)",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _download(
    request: Request, session: Session, store: ObjectStore, tenant: str, job_id: str, name: str
) -> Response:
    """The artifact as a 200, 206 or 304, by the request's conditional and Range headers."""
    row, size = artifacts.get_download(session, store, tenant, job_id, name)
    etag = f'"{row.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=86400",
        "Content-Disposition": f'attachment; filename="{name}"',
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={k: headers[k] for k in ("ETag", "Cache-Control")})

    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    byte_range = None
    if range_header and (if_range is None or if_range.strip() == etag):
        byte_range = _byte_range(range_header, size)
    if byte_range is None:
        return StreamingResponse(
            store.iter_range(row.storage_key),
            media_type=row.content_type,
            headers={**headers, "Content-Length": str(size)},
        )
    start, end = byte_range
    return StreamingResponse(
        store.iter_range(row.storage_key, start, end),
        status_code=206,
        media_type=row.content_type,
        headers={
            **headers,
            "Content-Range": f"bytes {start}-{end}/{size}",
            "Content-Length": str(end - start + 1),
        },
    )


@router.get(
    "/{id}/artifacts/{name}",
    summary="Download an artifact",
    description=(
        "Streams the file. `ETag` is the quoted SHA-256; `If-None-Match` gives 304; a single "
        "`Range: bytes=a-b` (or `a-`, `-n`) gives 206 with `Content-Range`, 416 when outside "
        "the file. 409 until the job has succeeded."
    ),
    response_class=Response,
    responses=_DOWNLOAD_RESPONSES,
)
def download_artifact(
    request: Request, job_id: JobId, name: ArtifactName, session: SessionDep, tenant: TenantDep
) -> Response:
    return _download(request, session, request.app.state.ctx.store, tenant, job_id, name)


@router.get(
    "/{id}/student",
    summary="Download the student (student.pt)",
    description="The same as /v1/jobs/{id}/artifacts/student.pt.",
    response_class=Response,
    responses=_DOWNLOAD_RESPONSES,
)
def download_student(
    request: Request, job_id: JobId, session: SessionDep, tenant: TenantDep
) -> Response:
    return _download(request, session, request.app.state.ctx.store, tenant, job_id, "student.pt")
