"""Engine and session factory. SQLite gets WAL and a busy timeout so the API and a worker
process can share the file; PostgreSQL goes through psycopg 3.

Database outages: pooled PostgreSQL connections are checked before use (``pool_pre_ping``), a
connect gives up after ``CAKE_DB_CONNECT_TIMEOUT_S`` instead of hanging on an unreachable
server, and TCP keepalives notice a peer that vanished without closing the connection.
:func:`retrying` lets a worker's state changes (claim, finish, hand back) ride out an outage of
about a minute (``CAKE_DB_RETRY_*``).

There is no process-wide engine here: each process builds its own from its settings at its
entry point (:class:`cake_shared.services.Services`) and passes it down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from cake_shared.retry import backoff_delay, call_with_retries

if TYPE_CHECKING:
    from cake_shared.settings import Settings

log = logging.getLogger("cake.db")
T = TypeVar("T")


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy would default to psycopg2)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, connect_timeout_s: int = 5) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # The pool as large as PostgreSQL's: with SQLAlchemy's default of 5, the API's 10 slots
        # for short reads (``AppContext.db_slots``) opened and closed an overflow connection
        # (and ran the pragmas below) for every poll of a burst past the fifth.
        database = make_url(url).database
        in_memory = not database or database == ":memory:"  # a connection per thread, no pool
        pool = {} if in_memory else {"pool_size": 10, "max_overflow": 20}
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    connect_args = {}
    if url.startswith("postgresql+psycopg"):
        connect_args = {
            "connect_timeout": int(connect_timeout_s),
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            # Unacknowledged data (a statement sent into a dead link) fails after 30 s instead
            # of the kernel's ~15 min of retransmissions.
            "tcp_user_timeout": 30_000,
        }
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args
    )


@contextmanager
def session_scope(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session of ``sessions`` that commits on success and rolls back on error."""
    session = sessions()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be reached or dropped the connection
    (as opposed to a bad statement or a constraint): worth trying again a bit later."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)


def retrying(
    what: str,
    call: Callable[[], T],
    settings: Settings,
    *,
    attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, tried again with exponential backoff while the database is unavailable
    (tries and backoff: ``settings.db_retry_*``, ``attempts`` overrides the tries).

    For state changes that must not be dropped (a job's claim, its end, a hand-back). Each
    of them is a compare-and-set on the job's claim token, so a retry after a commit whose
    answer was lost does not apply twice: it finds the state already changed and says so.
    """
    attempts = attempts or settings.db_retry_attempts

    def log_retry(exc: BaseException, delay: float, failures: int) -> None:
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        log.warning(
            "database unavailable during %s (%s: %s); retrying in %.1f s (try %d of %d)",
            what, type(exc).__name__, reason, delay, failures + 1, attempts,
        )  # fmt: skip

    return call_with_retries(
        call,
        attempts=attempts,
        retryable=is_unavailable,
        delay=lambda failures: backoff_delay(
            failures, settings.db_retry_backoff_s, settings.db_retry_backoff_max_s
        ),
        sleep=sleep,
        on_retry=log_retry,
    )
