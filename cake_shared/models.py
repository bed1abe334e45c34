"""SQLAlchemy 2.x models: the database is the source of truth for every job's state.

Schema changes go through Alembic migrations in ``migrations/`` only; a test checks that an
autogenerate diff against these models is empty.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cake_shared.status import JobPhase, JobStatus

LOCAL_TENANT = "local"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Teacher(Base):
    __tablename__ = "teachers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=LOCAL_TENANT, index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    input_shape: Mapped[list[Any]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    parameters: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Deleted teachers stay as rows so finished jobs keep naming the teacher they came from.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=LOCAL_TENANT, index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    num_examples: Mapped[int] = mapped_column(Integer)
    input_shape: Mapped[list[Any]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_status", "tenant", "status"),
        Index("ix_jobs_webhook_due", "webhook_status", "webhook_next_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=LOCAL_TENANT, index=True)
    teacher_id: Mapped[str] = mapped_column(ForeignKey("teachers.id"), index=True)
    eval_dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"))
    # The words of cake_shared.status, stored as their strings (rows read back hold plain str).
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    phase: Mapped[str] = mapped_column(String(16), default=JobPhase.QUEUED.value)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: The attempt whose artifacts the job serves (``jobs/<id>/attempts/<n>/artifacts/``,
    #: ``cake_shared.job_keys``), written with the artifact rows when the job succeeds; null
    #: for other jobs and for jobs that succeeded before per-attempt keys (their rows name the
    #: old keys).
    artifacts_attempt: Mapped[int | None] = mapped_column(Integer)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(64))
    # running: the worker's last heartbeat; queued, waiting for a slot of its tenant: when it
    # last asked (``jobs.defer_job``)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # Webhook: where to POST the job when it ends, and the delivery's durable state, so that
    # a crash between attempts neither loses nor repeats a delivery the receiver acknowledged.
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    #: null (no callback, or the job has not ended), else a WebhookStatus: pending, delivered
    #: or failed
    webhook_status: Mapped[str | None] = mapped_column(String(16))
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobEvent(Base):
    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Artifact(Base):
    __tablename__ = "artifacts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(128))
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    method_path: Mapped[str] = mapped_column(String(256))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Tenant(Base):
    """A tenant: owns objects and API keys, signs its webhooks, may override the limits.

    Rows are created on first use (``cake keys create --tenant NAME`` or the first webhook of
    the local tenant). A null limit means the service-wide default from the settings.
    """

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    webhook_secret: Mapped[str] = mapped_column(String(128))
    #: The secret the last rotation replaced: callbacks carry its signature too until
    #: ``previous_webhook_secret_expires_at`` (``webhook_secret_grace_s`` after the rotation),
    #: so receivers can switch secrets without refusing deliveries meanwhile.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(128))
    previous_webhook_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key. Only the SHA-256 of the secret is stored; ``prefix`` identifies it in lists."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(ForeignKey("tenants.name"), index=True)
    name: Mapped[str | None] = mapped_column(String(256))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Worker(Base):
    """A live (or recently live) worker: its heartbeat, the queues it serves and its device.

    Each worker process upserts its row every ``worker_heartbeat_s`` and deletes it when it
    stops cleanly; a row older than ``worker_live_s`` is a worker that died (``cake_shared.
    workers``). The API reads these rows for ``/readyz``, ``/metrics``, the ``auto`` queue and
    the ``no_worker`` event.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: the queues it consumes, e.g. ["gpu", "cpu"]
    queues: Mapped[list[str]] = mapped_column(JSON)
    #: "cuda" or "cpu"
    device: Mapped[str] = mapped_column(String(16))
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    version: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
