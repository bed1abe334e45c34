"""Migrations: empty -> head -> base on SQLite and PostgreSQL, and they agree with the models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from postgres_support import fresh_database
from sqlalchemy import inspect

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
