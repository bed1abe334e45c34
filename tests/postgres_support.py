"""A fresh database of its own on the local PostgreSQL (127.0.0.1:5432, as
``scripts/services.sh`` starts it), for the fixtures of several test folders.

Each test module gets a uniquely named database, so suites running side by side never see each
other's rows, and it is dropped (``WITH (FORCE)``, past any connection left open) afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import pytest

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL_PREFIX = "postgresql://postgres@127.0.0.1:5432/"


@contextmanager
def fresh_database(
    prefix: str, *, missing: Literal["skip", "fail"] = "fail", hint: str = ""
) -> Iterator[str]:
    """The URL of a new database named ``<prefix>_<12 hex digits>``, dropped on exit.

    ``missing`` says what a PostgreSQL that does not answer does to the test: ``"fail"`` for
    suites that are about the deployment on PostgreSQL (end-to-end, faults), ``"skip"`` (also
    when psycopg is not installed) for suites where PostgreSQL is one backend of several.
    ``hint`` is added to the message (how to start the service).
    """
    if missing == "skip":
        psycopg = pytest.importorskip("psycopg")
    else:
        import psycopg
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL does not answer on 127.0.0.1:5432 ({exc})"
        if hint:
            message += f"; {hint}"
        if missing == "skip":
            pytest.skip(message)
        pytest.fail(message)
    try:
        yield PG_URL_PREFIX + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
