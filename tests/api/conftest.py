"""Fixtures for the API tests: real SQLite file database and local store under tmp_path.

Only the broker is replaced (a ``FakeQueue`` handed to ``create_app`` as the app's job queue,
which records job ids), so everything between the HTTP request and the queue is the real code.
Teachers are the real TorchScript models bundled in ``examples/`` (trained on scikit-learn's
digits and wine by ``examples/teachers.py``), which spares the ~70 s of training that the
session fixtures ``digits_teacher``/``wine_teacher`` cost when this folder runs alone.
Helpers live in ``api_support``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import EXAMPLES, BundledTeacher, FakeQueue, TestClient, make_app
from fastapi import FastAPI


@pytest.fixture(scope="session")
def digits() -> BundledTeacher:
    return BundledTeacher(
        EXAMPLES / "digits_cnn.pt", EXAMPLES / "digits_cnn_test.npz", (1, 8, 8), 10
    )


@pytest.fixture(scope="session")
def wine() -> BundledTeacher:
    return BundledTeacher(EXAMPLES / "wine_mlp.pt", EXAMPLES / "wine_mlp_test.npz", (13,), 3)


@pytest.fixture
def fake_queue() -> FakeQueue:
    """The job queue of every app ``make_client`` builds in the test."""
    return FakeQueue()


@pytest.fixture
def make_client(tmp_path: Path, fake_queue: FakeQueue) -> Iterator[Callable[..., TestClient]]:
    apps: list[FastAPI] = []

    def factory(**overrides: Any) -> TestClient:
        app = make_app(tmp_path / f"app{len(apps)}", fake_queue, **overrides)
        apps.append(app)
        return TestClient(app, raise_server_exceptions=False)

    yield factory
    for app in apps:
        app.state.ctx.engine.dispose()


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
