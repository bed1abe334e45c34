"""Teachers: upload (streamed, checked in a sandbox, stored by content), list, get, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from api.crud import teachers
from api.deps import AppContext, IdempotencyKeyDep, SessionDep, TenantDep
from api.routes import common
from api.schemas import ANY_CLIENT_ERROR, Teacher, TeacherList, problem_responses
from api.serializers import page, teacher_out
from api.uploads import MultipartForm
from cake_shared.models import Teacher as TeacherRow

router = APIRouter(prefix="/v1/teachers", tags=["teachers"], responses=ANY_CLIENT_ERROR)

TeacherId = Annotated[str, Path(alias="id", description="tch_… identifier")]

TEACHER_FORM = common.UploadForm(
    file_field="file",
    text_fields=frozenset({"input_shape", "name", "num_classes"}),
    required=("file", "input_shape"),
    schema="TeacherUploadForm",
)


def _create_from_form(
    ctx: AppContext, tenant: str, form: MultipartForm, idem_key: str | None
) -> JSONResponse:
    """Blocking part of the upload: idempotency, sandboxed check, store, row."""
    fields = common.TeacherFields.parse(form)
    upload = form.files["file"]

    def create(session: Session) -> TeacherRow:
        facts = fields.check(ctx, upload)
        return teachers.create_teacher(ctx, session, tenant, upload, facts, fields.name)

    return common.create_once(
        ctx, tenant, idem_key, form.content_hash(), "/v1/teachers", 201, create, teacher_out
    )


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
    openapi_extra={"requestBody": TEACHER_FORM.request_body()},
    responses=problem_responses(409, 413, 422, 503),
)
async def create_teacher(
    request: Request, tenant: TenantDep, idem_key: IdempotencyKeyDep = None
) -> Response:
    return await common.with_upload(request, TEACHER_FORM, _create_from_form, tenant, idem_key)


@router.get("", response_model=TeacherList, summary="List teachers, newest first")
def list_teachers(
    session: SessionDep,
    tenant: TenantDep,
    limit: common.LimitQuery = 20,
    after: common.AfterQuery = None,
) -> dict[str, Any]:
    rows, has_more = teachers.list_teachers(session, tenant, limit, after)
    return page([teacher_out(r) for r in rows], has_more)


@router.get(
    "/{id}", response_model=Teacher, summary="Get a teacher", responses=problem_responses(404)
)
def get_teacher(teacher_id: TeacherId, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    return teacher_out(teachers.get_teacher(session, tenant, teacher_id))


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
    teachers.delete_teacher(request.app.state.ctx, session, tenant, teacher_id)
    return Response(status_code=204)
