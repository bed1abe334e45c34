"""Evaluation data sets: lookups, the tenant's list, storing an upload."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.crud.common import add_upload, find_owned, newest_first, or_404, or_404_at
from api.deps import AppContext
from api.npz import DatasetFacts
from api.uploads import UploadedFile
from cake_shared.ids import new_id
from cake_shared.models import Dataset, utcnow


def get_dataset(session: Session, tenant: str, dataset_id: str) -> Dataset:
    """The data set a path names; 404 when unknown or another tenant's."""
    return or_404(find_owned(session, Dataset, tenant, dataset_id), "dataset", dataset_id)


def get_job_dataset(
    session: Session, tenant: str, dataset_id: str, loc: list[str | int]
) -> Dataset:
    """The eval data set a job body names; its 404 points at the field (``loc``)."""
    row = find_owned(session, Dataset, tenant, dataset_id)
    return or_404_at(row, "dataset", dataset_id, loc, "no such data set")


def list_datasets(
    session: Session, tenant: str, limit: int, after: str | None
) -> tuple[list[Dataset], bool]:
    """A page of the tenant's data sets, newest first, and whether more follow."""
    stmt = select(Dataset).where(Dataset.tenant == tenant)
    return newest_first(session, stmt, Dataset, limit, after)


def create_dataset(
    ctx: AppContext,
    session: Session,
    tenant: str,
    upload: UploadedFile,
    facts: DatasetFacts,
    name: str | None,
) -> Dataset:
    """Add the checked data set (not committed), its file stored under ``datasets/<sha256>``;
    409 over the tenant's storage quota."""
    row = Dataset(
        id=new_id("dataset"),
        tenant=tenant,
        name=name,
        sha256=upload.sha256,
        size_bytes=upload.size,
        num_examples=facts.num_examples,
        input_shape=facts.input_shape,
        num_classes=facts.num_classes,
        created_at=utcnow(),
    )
    return add_upload(ctx, session, tenant, "datasets", upload, row)
