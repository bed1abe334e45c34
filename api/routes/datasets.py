"""Evaluation data sets: an ``.npz`` used only to report accuracy, never to train."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from api.crud import datasets
from api.deps import AppContext, IdempotencyKeyDep, SessionDep, TenantDep
from api.npz import inspect_npz
from api.routes import common
from api.schemas import ANY_CLIENT_ERROR, Dataset, DatasetList, problem_responses
from api.serializers import dataset_out, page
from api.uploads import MultipartForm, parse_name_field
from cake_shared.models import Dataset as DatasetRow

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ANY_CLIENT_ERROR)

DatasetId = Annotated[str, Path(alias="id", description="ds_… identifier")]

DATASET_FORM = common.UploadForm(
    file_field="file",
    text_fields=frozenset({"name"}),
    required=("file",),
    schema="DatasetUploadForm",
)


def _create_from_form(
    ctx: AppContext, tenant: str, form: MultipartForm, idem_key: str | None
) -> JSONResponse:
    """Blocking part of the upload: idempotency, the numpy check, store, row."""
    name = parse_name_field(form.fields.get("name"), ["body", "name"])
    upload = form.files["file"]

    def create(session: Session) -> DatasetRow:
        facts = inspect_npz(upload.path)
        return datasets.create_dataset(ctx, session, tenant, upload, facts, name)

    return common.create_once(
        ctx, tenant, idem_key, form.content_hash(), "/v1/datasets", 201, create, dataset_out
    )


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
    openapi_extra={"requestBody": DATASET_FORM.request_body()},
    responses=problem_responses(409, 413, 422),
)
async def create_dataset(
    request: Request, tenant: TenantDep, idem_key: IdempotencyKeyDep = None
) -> Response:
    return await common.with_upload(request, DATASET_FORM, _create_from_form, tenant, idem_key)


@router.get("", response_model=DatasetList, summary="List data sets, newest first")
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1..100.")] = 20,
    after: Annotated[str | None, Query(description="Cursor: next_after of the last page.")] = None,
) -> dict[str, Any]:
    rows, has_more = datasets.list_datasets(session, tenant, limit, after)
    return page([dataset_out(r) for r in rows], has_more)


@router.get(
    "/{id}", response_model=Dataset, summary="Get a data set", responses=problem_responses(404)
)
def get_dataset(dataset_id: DatasetId, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    return dataset_out(datasets.get_dataset(session, tenant, dataset_id))
