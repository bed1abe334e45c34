"""Migrations: empty -> head -> base on SQLite and PostgreSQL, and they agree with the models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from postgres_support import fresh_database
from sqlalchemy import Connection, inspect, text

from cake_cli.service import downgrade_database, upgrade_database
from cake_shared.db import make_engine
from cake_shared.models import Base

TABLES = {
    "teachers",
    "datasets",
    "jobs",
    "job_events",
    "artifacts",
    "idempotency_keys",
    "tenants",
    "api_keys",
}


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'migrate.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named database on the local PostgreSQL, dropped afterwards."""
    with fresh_database("cake_migrate", missing="skip") as url:
        yield url


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite_url", "postgres_url"])
def test_upgrade_matches_models_and_downgrades_to_empty(request, backend):
    url = request.getfixturevalue(backend)
    upgrade_database("head", url=url)
    assert _tables(url) >= TABLES
    assert _diff(url) == []

    downgrade_database("base", url=url)
    assert _tables(url) - {"alembic_version"} == set()

    # And up again: the downgrade left nothing behind that blocks a fresh upgrade.
    upgrade_database("head", url=url)
    assert _diff(url) == []


def test_artifact_rows_from_before_per_attempt_keys_keep_their_keys(sqlite_url):
    """0006 adds ``jobs.artifacts_attempt``; a job that succeeded before it keeps its artifact
    rows and their old keys (``jobs/<id>/artifacts/<name>``, which downloads read from the
    row), with a null attempt; a downgrade keeps a new-layout row's key just as well."""
    upgrade_database("0005", url=sqlite_url)
    engine = make_engine(sqlite_url)
    old_key = "jobs/job_old/artifacts/student.pt"
    new_key = "jobs/job_new/attempts/2/artifacts/student.pt"
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO teachers (id, tenant, sha256, size_bytes, input_shape, "
                    "num_classes, parameters, storage_key, created_at) VALUES ('teacher_1', "
                    "'local', 'ab', 1, '[13]', 3, 1, 'teachers/ab', CURRENT_TIMESTAMP)"
                )
            )
            _add_succeeded_job(conn, "job_old", old_key)
        upgrade_database("head", url=sqlite_url)
        with engine.begin() as conn:
            row = conn.execute(
                text(
                    "SELECT j.artifacts_attempt, a.storage_key FROM jobs j "
                    "JOIN artifacts a ON a.job_id = j.id WHERE j.id = 'job_old'"
                )
            ).one()
            assert tuple(row) == (None, old_key)
            _add_succeeded_job(conn, "job_new", new_key)
            conn.execute(text("UPDATE jobs SET artifacts_attempt = 2 WHERE id = 'job_new'"))
        downgrade_database("0005", url=sqlite_url)
        with engine.begin() as conn:
            keys = conn.execute(text("SELECT storage_key FROM artifacts ORDER BY job_id")).all()
        assert [k for (k,) in keys] == [new_key, old_key]
    finally:
        engine.dispose()


def _add_succeeded_job(conn: Connection, job_id: str, key: str) -> None:
    conn.execute(
        text(
            "INSERT INTO jobs (id, tenant, teacher_id, status, phase, progress, spec, metrics, "
            "attempts, metadata, queue, cancel_requested, created_at, updated_at, "
            "webhook_attempts) VALUES (:id, 'local', 'teacher_1', 'succeeded', 'succeeded', 1.0, "
            "'{}', '{}', 1, '{}', 'cpu', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0)"
        ),
        {"id": job_id},
    )
    conn.execute(
        text(
            "INSERT INTO artifacts (job_id, name, size_bytes, sha256, content_type, storage_key, "
            "created_at) VALUES (:id, 'student.pt', 1, 'cd', 'application/octet-stream', :key, "
            "CURRENT_TIMESTAMP)"
        ),
        {"id": job_id, "key": key},
    )
