"""Teachers: upload (streamed, checked in a sandbox, stored by content), list, get, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api import idempotency, service
from api.deps import AppContext, IdempotencyKeyDep, SessionDep, TenantDep
from api.errors import conflict
from api.schemas import ANY_CLIENT_ERROR, Teacher, TeacherList, problem_responses
from api.uploads import (
    MultipartForm,
    check_teacher,
    parse_input_shape_field,
    parse_int_field,
    parse_name_field,
    read_multipart,
)
from cake_shared.models import Teacher as TeacherRow

router = APIRouter(prefix="/v1/teachers", tags=["teachers"], responses=ANY_CLIENT_ERROR)

TeacherId = Annotated[str, Path(alias="id", description="tch_… identifier")]
LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size, 1..100.")]
AfterQuery = Annotated[
    str | None, Query(description="Cursor: the next_after of the previous page.")
]

TEACHER_FORM_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/TeacherUploadForm"}}
    },
}


def _create_from_form(
    ctx: AppContext, tenant: str, form: MultipartForm, idem_key: str | None
) -> JSONResponse:
    """Blocking part of the upload: idempotency, sandboxed check, store, row."""
    shape = parse_input_shape_field(form.fields["input_shape"], ["body", "input_shape"])
    num_classes = parse_int_field(form.fields.get("num_classes"), ["body", "num_classes"], 2)
    name = parse_name_field(form.fields.get("name"), ["body", "name"])
    idem = idempotency.make_request(tenant, idem_key, "POST /v1/teachers", form.content_hash())
    ttl = ctx.settings.idempotency_ttl_s
    upload = form.files["file"]
    with ctx.sessionmaker() as session:
        replayed = idempotency.replay(session, idem, ttl)
        if replayed is not None:
            return replayed
        facts = check_teacher(
            upload.path, shape, num_classes, ctx.settings, ["body", "input_shape"]
        )
        row = service.store_teacher(ctx, session, tenant, upload, facts, name)
        body = service.teacher_out(row)
        replayed = idempotency.commit_created(session, idem, ttl, 201, body)
        if replayed is not None:
            return replayed
    return idempotency.created_response(201, body, f"/v1/teachers/{row.id}")


@router.post(
    "",
    status_code=201,
    response_model=Teacher,
    summary="Upload a teacher",
    description=(
        "multipart/form-data with `file` (TorchScript archive), `input_shape` (JSON array), "
        "optional `name` and `num_classes`. The file is streamed to disk with the size cap "
        "(CAKE_MAX_UPLOAD_BYTES) and its SHA-256 computed on the way, checked in a sandboxed "
        "child process with a time and memory limit (it must run a probe batch on the CPU and "
        "return finite logits [B, C], C >= 2), then stored by content."
    ),
    openapi_extra={"requestBody": TEACHER_FORM_BODY},
    responses=problem_responses(409, 413, 422, 503),
)
async def create_teacher(
    request: Request, tenant: TenantDep, idem_key: IdempotencyKeyDep = None
) -> Response:
    ctx: AppContext = request.app.state.ctx
    form = await read_multipart(
        request,
        file_fields={"file"},
        text_fields={"input_shape", "name", "num_classes"},
        required=("file", "input_shape"),
        max_file_bytes=ctx.settings.max_upload_bytes,
        tmp_dir=ctx.upload_dir,
    )
    try:
        return await run_in_threadpool(_create_from_form, ctx, tenant, form, idem_key)
    finally:
        await run_in_threadpool(form.cleanup)


@router.get("", response_model=TeacherList, summary="List teachers, newest first")
def list_teachers(
    session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20, after: AfterQuery = None
) -> dict[str, Any]:
    stmt = select(TeacherRow).where(TeacherRow.tenant == tenant, TeacherRow.deleted_at.is_(None))
    rows, has_more = service.newest_first(session, stmt, TeacherRow, limit, after)
    return service.page([service.teacher_out(r) for r in rows], has_more)


@router.get(
    "/{id}", response_model=Teacher, summary="Get a teacher", responses=problem_responses(404)
)
def get_teacher(teacher_id: TeacherId, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    return service.teacher_out(service.get_teacher(session, tenant, teacher_id))


@router.delete(
    "/{id}",
    status_code=204,
    summary="Delete a teacher",
    description=(
        "409 while a job that uses it is queued or running. Finished jobs keep naming it. The "
        "stored file is removed when no other teacher shares it."
    ),
    responses=problem_responses(404, 409),
)
def delete_teacher(
    request: Request, teacher_id: TeacherId, session: SessionDep, tenant: TenantDep
) -> Response:
    ctx: AppContext = request.app.state.ctx
    try:
        service.delete_teacher(ctx, session, tenant, teacher_id)
    except IntegrityError:
        session.rollback()
        raise conflict(f"teacher {teacher_id} is used by a job created meanwhile") from None
    return Response(status_code=204)
