"""Evaluation data sets: an ``.npz`` used only to report accuracy, never to train."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from api import idempotency, service
from api.deps import AppContext, IdempotencyKeyDep, SessionDep, TenantDep
from api.npz import inspect_npz
from api.schemas import ANY_CLIENT_ERROR, Dataset, DatasetList, problem_responses
from api.uploads import MultipartForm, parse_name_field, read_multipart
from cake_shared.models import Dataset as DatasetRow

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ANY_CLIENT_ERROR)

DatasetId = Annotated[str, Path(alias="id", description="ds_… identifier")]

DATASET_FORM_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/DatasetUploadForm"}}
    },
}


def _create_from_form(
    ctx: AppContext, tenant: str, form: MultipartForm, idem_key: str | None
) -> JSONResponse:
    name = parse_name_field(form.fields.get("name"), ["body", "name"])
    idem = idempotency.make_request(tenant, idem_key, "POST /v1/datasets", form.content_hash())
    ttl = ctx.settings.idempotency_ttl_s
    upload = form.files["file"]
    with ctx.sessionmaker() as session:
        replayed = idempotency.replay(session, idem, ttl)
        if replayed is not None:
            return replayed
        facts = inspect_npz(upload.path)
        row = service.store_dataset(ctx, session, tenant, upload, facts, name)
        body = service.dataset_out(row)
        replayed = idempotency.commit_created(session, idem, ttl, 201, body)
        if replayed is not None:
            return replayed
    return idempotency.created_response(201, body, f"/v1/datasets/{row.id}")


@router.post(
    "",
    status_code=201,
    response_model=Dataset,
    summary="Upload an evaluation data set",
    description=(
        "multipart/form-data with `file`: an .npz holding `x` (float32, [N, *input_shape]) and "
        "`y` (int, [N]); optional `name`. Checked with numpy (no pickles): x finite floats, y "
        "integer classes >= 0; num_classes is max(y) + 1. Used only to report accuracy."
    ),
    openapi_extra={"requestBody": DATASET_FORM_BODY},
    responses=problem_responses(409, 413, 422),
)
async def create_dataset(
    request: Request, tenant: TenantDep, idem_key: IdempotencyKeyDep = None
) -> Response:
    ctx: AppContext = request.app.state.ctx
    form = await read_multipart(
        request,
        file_fields={"file"},
        text_fields={"name"},
        required=("file",),
        max_file_bytes=ctx.settings.max_upload_bytes,
        tmp_dir=ctx.upload_dir,
    )
    try:
        return await run_in_threadpool(_create_from_form, ctx, tenant, form, idem_key)
    finally:
        await run_in_threadpool(form.cleanup)


@router.get("", response_model=DatasetList, summary="List data sets, newest first")
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1..100.")] = 20,
    after: Annotated[str | None, Query(description="Cursor: next_after of the last page.")] = None,
) -> dict[str, Any]:
    stmt = select(DatasetRow).where(DatasetRow.tenant == tenant)
    rows, has_more = service.newest_first(session, stmt, DatasetRow, limit, after)
    return service.page([service.dataset_out(r) for r in rows], has_more)


@router.get(
    "/{id}", response_model=Dataset, summary="Get a data set", responses=problem_responses(404)
)
def get_dataset(dataset_id: DatasetId, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    return service.dataset_out(service.get_dataset(session, tenant, dataset_id))
