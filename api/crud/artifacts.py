"""Artifacts of a job: the list, and the one a download asks for."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.crud.jobs import get_job
from api.errors import ApiError, conflict
from cake_shared.models import Artifact
from cake_shared.status import JobStatus
from cake_shared.storage import ObjectStore


def list_artifacts(session: Session, tenant: str, job_id: str) -> list[Artifact]:
    """The job's artifacts in name order (a stable listing); 404 for an unknown job."""
    job = get_job(session, tenant, job_id)
    return list(
        session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name))
    )


def get_download(
    session: Session, store: ObjectStore, tenant: str, job_id: str, name: str
) -> tuple[Artifact, int]:
    """The artifact to download and its stored size.

    404 for an unknown job, artifact or a file missing from the store; 409 until the job has
    succeeded, since only then are its artifacts final (their SHA-256 is the download's ETag).
    """
    job = get_job(session, tenant, job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise conflict(
            f"job {job.id} is {job.status}; its artifacts can be downloaded once it has succeeded"
        )
    row = session.get(Artifact, (job.id, name))
    if row is None:
        raise ApiError(404, "not_found", f"job {job.id} has no artifact {name!r}")
    size = store.size(row.storage_key)
    if size is None:
        raise ApiError(404, "not_found", f"the file of artifact {name!r} is missing from the store")
    return row, size
