"""All service settings, read from ``CAKE_*`` environment variables (one module, one place).

With nothing set the service runs embedded on one machine: SQLite and a local-disk store under
``CAKE_DATA_DIR`` and a broker that needs no server (kombu's filesystem transport).

A process reads its :class:`Settings` once, at its entry point (``create_app``, the worker's
Celery app, a CLI command), and hands them down, usually inside a
:class:`~cake_shared.services.Services`; nothing reads them from a module-level cache, so two
apps with different settings can live in one process and mean what their settings say.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cake_shared.queue_names import AUTO, QUEUE_CHOICES


def absolute_database_url(url: str, base: Path | None = None) -> str:
    """``url`` with a relative SQLite file made absolute (against ``base``, default the working
    folder); other URLs (PostgreSQL, in-memory SQLite) unchanged."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy reads: leave it for the engine to refuse
        return url
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database:
        return url
    if database == ":memory:" or database.startswith("file:"):
        return url
    path = Path(database).expanduser()
    if path.is_absolute():
        return url
    resolved = (base or Path.cwd()) / path
    return parsed.set(database=str(resolved.resolve())).render_as_string(hide_password=False)


def absolute_store_url(url: str, base: Path | None = None) -> str:
    """``url`` with a local store's relative path made absolute: ``file://./store``,
    ``file:store`` or a plain path become ``file:///abs/store``; ``s3://`` is unchanged."""
    parsed = urlparse(url)
    if parsed.scheme not in ("file", ""):
        return url
    if parsed.scheme == "":
        raw = url
    elif parsed.netloc in ("", "localhost"):
        raw = parsed.path
    else:  # file://relative/path: the first part landed in the host
        raw = parsed.netloc + parsed.path
    if not raw:
        return url
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return f"file://{path.resolve()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAKE_", extra="ignore")

    data_dir: Path = Field(Path("cake-data"), description="root for embedded defaults")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite")
    broker_url: str | None = Field(None, description="Celery broker; default filesystem")
    store_url: str | None = Field(None, description="file:///path or s3://bucket/prefix")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO...)")
    s3_region: str | None = None

    max_upload_bytes: int = 1 << 30
    teacher_check_timeout_s: float = 60.0
    teacher_check_memory_bytes: int = 4 << 30
    job_max_attempts: int = 3
    job_heartbeat_timeout_s: float = 300.0
    progress_interval_s: float = 1.0
    visibility_timeout_s: int = 12 * 3600
    default_queue: str = Field(
        AUTO, description="auto (gpu when a live GPU worker serves it, else cpu), gpu or cpu"
    )
    worker_device: str | None = None
    # The engine's sandbox in the worker (worker.engine_sandbox): a child process with no
    # network, no secrets, rlimits and writes only in the job's folder. A job fails when it
    # runs longer than job_timeout_s, makes no step for job_stall_timeout_s (a forward pass
    # that never returns) or needs more than job_memory_mb of address space (0: the machine's
    # memory; no limit on CUDA). worker_sandbox=false runs the engine in the worker process.
    worker_sandbox: bool = True
    job_timeout_s: float = Field(24 * 3600.0, gt=0)
    job_stall_timeout_s: float = Field(1800.0, gt=0)
    job_memory_mb: int = Field(0, ge=0)
    # Worker heartbeats (cake_shared.workers): a worker records itself every
    # worker_heartbeat_s and counts as live until worker_live_s after its last record; a job
    # queued for no_worker_after_s while no live worker serves its queue gets a no_worker event
    # (the API looks every worker_watch_interval_s).
    worker_heartbeat_s: float = Field(2.0, gt=0)
    worker_live_s: float = Field(15.0, gt=0)
    no_worker_after_s: float = Field(3.0, ge=0)
    worker_watch_interval_s: float = Field(1.0, gt=0)
    idempotency_ttl_s: int = 24 * 3600
    sweep_interval_s: float = 30.0
    lost_job_after_s: float = 60.0
    # Orphans in the object store (cake_shared.store_sweep, run by the workers' sweeper every
    # sweep_interval_s): checkpoints of jobs that ended, files of jobs that were deleted, and
    # uploads no row refers to once they are older than orphan_upload_grace_s (an upload is
    # stored a moment before its row is committed). Each round looks at no more than
    # orphan_sweep_page objects per key prefix (jobs/, teachers/, datasets/).
    orphan_upload_grace_s: float = Field(3600.0, ge=0)
    orphan_sweep_page: int = Field(500, ge=1)

    # Riding out short outages of the object store and the database (cake_shared.storage,
    # cake_shared.db.retrying): try n waits min(backoff_max_s, backoff_s * 2**(n-1)), half of
    # it random, after try n-1 failed on a connection error; the error is raised after
    # `*_retry_attempts` tries (defaults: about a minute of outage).
    store_retry_attempts: int = Field(7, ge=1, description="tries of one object-store call")
    store_retry_backoff_s: float = Field(1.0, ge=0)
    store_retry_backoff_max_s: float = Field(20.0, ge=0)
    store_connect_timeout_s: float = Field(5.0, gt=0, description="S3 connect timeout")
    # The API's own, short store budget: a request waits a few seconds for the store, not a
    # minute, before it answers 503 `not_ready` with Retry-After (the client retries; a held
    # request holds a thread and a database slot). Defaults: 3 tries, at most 1.5 s of waits,
    # plus a 2 s connect timeout per try against an endpoint that does not answer at all.
    # Workers keep the long budget above: a job's store call is worth a minute of patience.
    api_store_retry_attempts: int = Field(3, ge=1, description="tries of a store call (API)")
    api_store_retry_backoff_s: float = Field(0.5, ge=0)
    api_store_retry_backoff_max_s: float = Field(2.0, ge=0)
    api_store_connect_timeout_s: float = Field(2.0, gt=0)
    db_retry_attempts: int = Field(8, ge=1, description="tries of a worker's state change")
    db_retry_backoff_s: float = Field(0.5, ge=0)
    db_retry_backoff_max_s: float = Field(15.0, ge=0)
    db_connect_timeout_s: int = Field(5, ge=1, description="PostgreSQL connect timeout")

    # Caps on one job's total work, checked when it is created (cake_core.config.WorkLimits;
    # 0 = no cap). The defaults leave ~100x room over the "default" preset on 3x32x32 inputs.
    max_job_synthesis_steps: int = Field(
        10**9, description="synthesis.num_samples x synthesis.steps"
    )
    max_job_training_samples: int = Field(
        10**9, description="synthesis.num_samples x synthesis.snapshots x training.epochs"
    )
    max_job_synthetic_bytes: int = Field(
        16 << 30, description="synthetic set size: num_samples x snapshots x input elements x 4"
    )

    # Access and per-tenant limits (a tenant's row may override the last four; 0 = no limit).
    auth_cache_s: float = Field(5.0, description="how long a checked API key is trusted")
    rate_limit_per_minute: int = Field(1200, description="requests per minute per API key")
    tenant_max_running_jobs: int = 2
    tenant_max_queued_jobs: int = 100
    tenant_max_stored_bytes: int = 20 << 30

    # Job webhooks (cake_shared.webhooks): attempt n waits backoff_s * 2**(n-1) (capped, +20%
    # jitter) after attempt n-1; given up after max_attempts, or when the next attempt would
    # come more than max_age_s after the job ended.
    webhook_timeout_s: float = Field(10.0, description="time limit of one delivery attempt")
    webhook_max_attempts: int = Field(10, ge=1)
    webhook_backoff_s: float = Field(10.0, ge=0)
    webhook_backoff_max_s: float = Field(1800.0, ge=0)
    webhook_max_age_s: float = Field(24 * 3600.0, ge=0)
    webhook_poll_s: float = Field(2.0, gt=0, description="how often workers look for due ones")
    webhook_concurrency: int = Field(4, ge=1, description="attempts one worker sends at once")
    #: True suits local mode (receivers on loopback); a managed deployment sets it false so that
    #: callbacks to loopback, private and link-local addresses are refused (SSRF).
    webhook_allow_private: bool = True
    #: After ``POST /v1/webhooks/secret/rotate`` the previous secret keeps signing callbacks
    #: (a second ``v1`` in ``Cake-Signature``) this long, so receivers can switch to the new
    #: secret without refusing deliveries meanwhile; 0 drops it at once.
    webhook_secret_grace_s: float = Field(24 * 3600.0, ge=0)

    # MLflow (worker.mlflow_log): a succeeded job logs its spec, metrics, artifacts and student
    # to this tracking server (anything MLflow accepts: http(s), a local path, sqlite:///...),
    # or to the http(s) `mlflow_tracking_uri` of its spec when its tenant is listed in
    # mlflow_spec_tenants (comma-separated, `*` for every tenant; empty: none). A call that
    # cannot reach MLflow is tried mlflow_retry_attempts times with the project's backoff, each
    # HTTP request limited to mlflow_timeout_s, and no new try starts mlflow_budget_s after
    # the logging began: a down server costs a job seconds, never its result.
    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI; unset: off")
    mlflow_experiment: str = Field("cake-distill", description="default experiment name")
    mlflow_spec_tenants: str = Field(
        "", description="tenants whose job specs may name their own MLflow server; * for all"
    )
    mlflow_timeout_s: float = Field(10.0, gt=0, description="time limit of one HTTP request")
    mlflow_retry_attempts: int = Field(3, ge=1)
    mlflow_retry_backoff_s: float = Field(1.0, ge=0)
    mlflow_retry_backoff_max_s: float = Field(5.0, ge=0)
    mlflow_budget_s: float = Field(120.0, gt=0, description="no new try after this long")

    def mlflow_spec_allowed(self, tenant: str) -> bool:
        """Whether ``tenant``'s job specs may name their own MLflow tracking server (the worker
        dials that URL, so the operator opts tenants in by name)."""
        allowed = {name.strip() for name in self.mlflow_spec_tenants.split(",") if name.strip()}
        return "*" in allowed or tenant in allowed

    @field_validator("default_queue")
    @classmethod
    def _known_queue(cls, value: str) -> str:
        """Refuse an unknown queue name when the settings are read, i.e. at start-up: a typo
        must stop the process with one clear line, not route every job to a queue nobody
        serves or silently to ``cpu`` (the names: :mod:`cake_shared.queue_names`)."""
        queue = value.strip().lower()
        if queue not in QUEUE_CHOICES:
            raise ValueError(
                f"CAKE_DEFAULT_QUEUE is {value!r}; it must be one of {', '.join(QUEUE_CHOICES)}"
            )
        return queue

    @model_validator(mode="after")
    def _absolute_locations(self) -> Settings:
        """Relative locations are resolved once, here, against this process's working folder;
        children get the absolute values (:meth:`child_env`), whatever their own folder."""
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.database_url:
            self.database_url = absolute_database_url(self.database_url)
        if self.store_url:
            self.store_url = absolute_store_url(self.store_url)
        return self

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cake.db').resolve()}"

    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"file://{(self.data_dir / 'store').resolve()}"

    def child_env(self) -> dict[str, str]:
        """The locations as absolute ``CAKE_*`` values, for the environment of a child process
        (a worker, a check sandbox): it opens the same database, store and broker as this one,
        whatever its working folder."""
        return {
            "CAKE_DATA_DIR": str(self.data_dir),
            "CAKE_DATABASE_URL": self.resolved_database_url(),
            "CAKE_STORE_URL": self.resolved_store_url(),
            "CAKE_BROKER_URL": self.resolved_broker_url(),
        }

    def pin_environment(self) -> None:
        """Write :meth:`child_env` into this process's environment, so that every child it
        starts from now on (and every later ``Settings()`` here) sees the same locations."""
        os.environ.update(self.child_env())

    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()
