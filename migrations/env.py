"""Alembic environment: the database URL comes from the caller (``cake db upgrade`` passes
its settings' URL) or, for a hand-run ``alembic upgrade head``, from the ``CAKE_*`` settings
read here; the target schema from :mod:`cake_shared.models`. Both migrate the same database
the service uses.

SQLite gets batch mode (it cannot ALTER most things in place).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from cake_shared.db import make_engine, normalize_url
from cake_shared.models import Base
from cake_shared.settings import Settings

config = context.config
if config.config_file_name is not None:  # the `alembic` command line, with alembic.ini
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url()
    return normalize_url(url)


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    is_sqlite = (url or "").startswith("sqlite") or (
        connection is not None and connection.dialect.name == "sqlite"
    )
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite,
        compare_type=True,
        literal_binds=connection is None,
    )


def run_migrations_offline() -> None:
    """``--sql`` mode: print the SQL instead of running it."""
    _configure(url=_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller (tests) passed its own connection
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
