"""All service settings, read from ``CAKE_*`` environment variables (one module, one place).

With nothing set the service runs embedded on one machine: SQLite and a local-disk store under
``CAKE_DATA_DIR`` and a broker that needs no server (kombu's filesystem transport).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    default_queue: str = "auto"
    worker_device: str | None = None
    idempotency_ttl_s: int = 24 * 3600
    sweep_interval_s: float = 30.0
    lost_job_after_s: float = 60.0

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cake.db').resolve()}"

    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"file://{(self.data_dir / 'store').resolve()}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
