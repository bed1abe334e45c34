"""Per-tenant limits: running jobs, queued jobs, stored bytes, requests per minute per key.

The service-wide defaults come from the settings (``CAKE_TENANT_MAX_*``); a tenant's row may
override each (``cake tenants set NAME --max-running-jobs N``); 0 means no limit. The API
checks the queued-jobs and stored-bytes limits when something is created; the worker checks
the running-jobs limit when it claims a job, so a job accepted over the limit waits, queued,
and is never dropped.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cake_shared.models import Artifact, Dataset, Job, Teacher, Tenant
from cake_shared.settings import Settings
from cake_shared.status import JobStatus


@dataclass(frozen=True)
class TenantLimits:
    max_running_jobs: int
    max_queued_jobs: int
    max_stored_bytes: int
    requests_per_minute: int


def limits_for(session: Session, settings: Settings, tenant: str) -> TenantLimits:
    row = session.get(Tenant, tenant)

    def pick(override: int | None, default: int) -> int:
        return default if override is None else override

    return TenantLimits(
        max_running_jobs=pick(row and row.max_running_jobs, settings.tenant_max_running_jobs),
        max_queued_jobs=pick(row and row.max_queued_jobs, settings.tenant_max_queued_jobs),
        max_stored_bytes=pick(row and row.max_stored_bytes, settings.tenant_max_stored_bytes),
        requests_per_minute=pick(row and row.requests_per_minute, settings.rate_limit_per_minute),
    )


def count_jobs(session: Session, tenant: str, status: JobStatus, exclude: str | None = None) -> int:
    query = select(func.count(Job.id)).where(Job.tenant == tenant, Job.status == status)
    if exclude is not None:
        query = query.where(Job.id != exclude)
    return int(session.scalar(query) or 0)


def stored_bytes(session: Session, tenant: str) -> int:
    """What the tenant keeps in the store: live teachers, data sets, its jobs' artifacts.

    Counted per row, as the tenant sees them (two teachers with the same bytes count twice).
    """
    teachers = session.scalar(
        select(func.coalesce(func.sum(Teacher.size_bytes), 0)).where(
            Teacher.tenant == tenant, Teacher.deleted_at.is_(None)
        )
    )
    datasets = session.scalar(
        select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.tenant == tenant)
    )
    artifacts = session.scalar(
        select(func.coalesce(func.sum(Artifact.size_bytes), 0))
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.tenant == tenant)
    )
    return int(teachers or 0) + int(datasets or 0) + int(artifacts or 0)


def lock_tenant(session: Session, tenant: str, job_id: str) -> None:
    """Serialise limit checks of one tenant until the transaction ends.

    PostgreSQL: an advisory lock per tenant. SQLite: a no-op write to the job's row, which
    takes the database's write lock before anything is counted (SQLite reads outside a
    transaction until the first write, so two workers could otherwise both count a free slot).
    """
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"cake-tenant:{tenant}".encode())
        session.execute(select(func.pg_advisory_xact_lock(key)))
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=Job.status)
            .execution_options(synchronize_session=False)
        )


def running_slot_free(session: Session, settings: Settings, job_id: str) -> bool:
    """May ``job_id`` start now without its tenant going over its running-jobs limit?

    The job itself is not counted (a job taken over from a dead worker is already running).
    """
    tenant = session.scalar(select(Job.tenant).where(Job.id == job_id))
    if tenant is None:
        return True
    limit = limits_for(session, settings, tenant).max_running_jobs
    if limit <= 0:
        return True
    lock_tenant(session, tenant, job_id)
    return count_jobs(session, tenant, JobStatus.RUNNING, exclude=job_id) < limit
