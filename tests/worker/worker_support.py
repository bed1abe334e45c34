"""Helpers for the worker tests: a real migrated database, store and broker in ``tmp_path``.

Nothing is mocked. A test's settings are read from ``CAKE_*`` variables once, when its
:class:`Service` is configured, and everything the test calls gets that service's
:class:`~cake_shared.services.Services` (``service.ctx``) passed in, as a worker process does.
A test that needs other settings configures another service.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cake_cli.service import ROOT, upgrade_database, worker_argv
from cake_shared.ids import new_id
from cake_shared.models import Dataset, Job, JobEvent, Teacher
from cake_shared.services import Services
from cake_shared.settings import Settings
from cake_shared.storage import ObjectStore

#: The bucket of the ``s3_endpoint`` fixture's S3 server.
S3_BUCKET = "cake-test"
TINY_SPEC: dict[str, Any] = {
    "synthesis": {"num_samples": 400, "steps": 10},
    "training": {"epochs": 2},
}
SERVICE_VARS = (
    "CAKE_DATABASE_URL",
    "CAKE_BROKER_URL",
    "CAKE_STORE_URL",
    "CAKE_S3_ENDPOINT_URL",
    "CAKE_S3_REGION",
    "CAKE_WORKER_DEVICE",
    "CAKE_JOB_MAX_ATTEMPTS",
    "CAKE_JOB_HEARTBEAT_TIMEOUT_S",
)


@dataclass
class Service:
    """The service a test runs jobs on: its data folder and its services (``ctx``)."""

    data_dir: Path
    ctx: Services

    @property
    def store(self) -> ObjectStore:
        return self.ctx.store

    def get_job(self, job_id: str) -> Job:
        with self.ctx.session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job

    def events(self, job_id: str) -> list[JobEvent]:
        with self.ctx.session_scope() as session:
            return list(
                session.scalars(
                    select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
                )
            )

    def add_job(
        self,
        teacher: Any,
        spec: dict[str, Any] | None = None,
        *,
        teacher_bytes: bytes | None = None,
        with_eval: bool = False,
        queue: str = "cpu",
    ) -> str:
        """Store the teacher (and eval set) and write Teacher/Dataset/Job rows, as the API does."""
        data = teacher_bytes if teacher_bytes is not None else Path(teacher.path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.store.put_bytes(f"teachers/{sha}", data)
        teacher_id, job_id = new_id("teacher"), new_id("job")
        dataset_id = None
        with self.ctx.session_scope() as session:
            session.add(
                Teacher(
                    id=teacher_id,
                    sha256=sha,
                    size_bytes=len(data),
                    input_shape=list(teacher.input_shape),
                    num_classes=teacher.num_classes,
                    parameters=1,
                    storage_key=f"teachers/{sha}",
                )
            )
            if with_eval:
                dataset_id = new_id("dataset")
                eval_bytes = Path(teacher.eval_path).read_bytes()
                key = f"datasets/{hashlib.sha256(eval_bytes).hexdigest()}"
                self.store.put_bytes(key, eval_bytes)
                session.add(
                    Dataset(
                        id=dataset_id,
                        sha256=key.split("/")[1],
                        size_bytes=len(eval_bytes),
                        num_examples=1,
                        input_shape=list(teacher.input_shape),
                        num_classes=teacher.num_classes,
                        storage_key=key,
                    )
                )
            session.flush()
            session.add(
                Job(
                    id=job_id,
                    teacher_id=teacher_id,
                    eval_dataset_id=dataset_id,
                    spec=spec if spec is not None else TINY_SPEC,
                    queue=queue,
                )
            )
        return job_id


def configure_service(
    monkeypatch: pytest.MonkeyPatch, data_dir: Path, opened: list[Services], **env: str
) -> Service:
    """Set the test's ``CAKE_*`` variables (``env`` on top of the defaults here), read the
    settings from them, migrate the database and build the services (added to ``opened``, to
    be closed when the test ends)."""
    for name in SERVICE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CAKE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CAKE_PROGRESS_INTERVAL_S", "0.05")
    # These tests claim several jobs of one tenant by hand; the running-jobs limit has tests
    # of its own (test_worker_limits), which set it.
    monkeypatch.setenv("CAKE_TENANT_MAX_RUNNING_JOBS", "0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    upgrade_database(url=settings.resolved_database_url())
    ctx = Services.from_settings(settings)
    opened.append(ctx)
    return Service(data_dir=data_dir, ctx=ctx)


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CeleryWorker:
    """``celery -A worker.app worker`` as a real child process, logging to a file (``solo`` pool
    for concurrency 1, ``prefork`` above)."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int = 1) -> None:
        self.log_path = log_path
        full_env = {**os.environ, **env, "OMP_NUM_THREADS": "1"}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.app",
                *worker_argv("cpu,gpu", concurrency),
            ],
            env=full_env,
            cwd=str(ROOT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
