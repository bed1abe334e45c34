"""Fixtures of the client tests: one real ``cake serve`` per test module that asks for it.

Module scope (not per test): starting the service and its Celery worker costs a few seconds,
and the jobs of one module run one after another on its single worker anyway.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from client_support import CakeServer, start_cake_server


@pytest.fixture(scope="module")
def cake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CakeServer]:
    server = start_cake_server(tmp_path_factory.mktemp("cake-serve"))
    try:
        yield server
    finally:
        server.stop()
