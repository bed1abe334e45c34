"""Empty databases of their own on the local Redis (127.0.0.1:6379, as ``scripts/services.sh``
starts it), for the fixtures of several test folders.

A test gets databases that hold no key when it starts (so it never reads another suite's
messages) and they are flushed afterwards. A Redis that does not answer skips the test, like a
missing ``redis`` package: Redis is one broker of several, the embedded one needs no server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@contextmanager
def empty_redis_databases(count: int = 1) -> Iterator[list[str]]:
    """URLs (``redis://127.0.0.1:6379/<n>``) of ``count`` distinct empty databases, highest
    numbers first; flushed on exit."""
    redis = pytest.importorskip("redis")
    clients = []
    try:
        for db in range(15, 0, -1):
            candidate = redis.Redis(
                host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=2
            )
            try:
                empty = candidate.dbsize() == 0
            except redis.ConnectionError as exc:
                pytest.skip(f"Redis is not running on {REDIS_HOST}:{REDIS_PORT}: {exc}")
            if empty:
                clients.append(candidate)
                if len(clients) == count:
                    break
            else:
                candidate.close()
        if len(clients) < count:
            pytest.skip(f"fewer than {count} empty Redis databases to use")
        yield [
            f"redis://{REDIS_HOST}:{REDIS_PORT}/{c.connection_pool.connection_kwargs['db']}"
            for c in clients
        ]
    finally:
        for client in clients:
            client.flushdb()
            client.close()
