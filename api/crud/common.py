"""What every resource's data access shares: tenant-scoped lookups, pages, stored uploads."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from api import quotas
from api.deps import AppContext
from api.errors import ApiError, not_found
from api.uploads import UploadedFile
from cake_shared.models import Dataset, Job, Teacher

Row = TypeVar("Row", Teacher, Job, Dataset)
#: Rows whose file is an upload stored by content.
Stored = TypeVar("Stored", Teacher, Dataset)
Found = TypeVar("Found")


def find_owned(session: Session, model: type[Row], tenant: str, row_id: str) -> Row | None:
    """The tenant's row with this id, or None: another tenant's row is treated as unknown, so
    ids never leak across tenants."""
    row = session.get(model, row_id)
    if row is None or row.tenant != tenant:
        return None
    return row


def or_404(row: Found | None, kind: str, row_id: str) -> Found:
    """``row``, or the one 404 for an unknown id (the path named it)."""
    if row is None:
        raise not_found(kind, row_id)
    return row


def or_404_at(row: Found | None, kind: str, row_id: str, loc: list[str | int], msg: str) -> Found:
    """``row``, or a 404 whose ``errors`` point at the body field that named the unknown id, so
    a client can tell which reference of its request was wrong."""
    if row is None:
        raise ApiError(
            404, "not_found", f"no {kind} with id {row_id!r}", errors=[{"loc": loc, "msg": msg}]
        )
    return row


def newest_first(
    session: Session, stmt: Select[tuple[Row]], model: type[Row], limit: int, after: str | None
) -> tuple[list[Row], bool]:
    """One page, newest first, and whether more follow: IDs sort by creation time, so the
    cursor is ``id < after`` (no offset to drift while rows are added)."""
    if after:
        stmt = stmt.where(model.id < after)
    rows = list(session.scalars(stmt.order_by(model.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def store_by_content(ctx: AppContext, kind: str, upload: UploadedFile) -> str:
    """Store an upload under ``<kind>/<sha256>`` unless that object is already there, so the
    same file uploaded twice is kept once."""
    key = f"{kind}/{upload.sha256}"
    if not ctx.store.exists(key):
        ctx.store.put_file(key, upload.path)
    return key


def add_upload(
    ctx: AppContext, session: Session, tenant: str, kind: str, upload: UploadedFile, row: Stored
) -> Stored:
    """Add the row of an uploaded file (not committed): 409 over the tenant's storage quota,
    else the file goes to the store under ``<kind>/<sha256>`` (once) and the row points at it."""
    quotas.check_storage(session, ctx.settings, tenant, upload.size)
    row.storage_key = store_by_content(ctx, kind, upload)
    session.add(row)
    session.flush()
    return row
