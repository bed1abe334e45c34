"""Helpers for the API tests (fixtures are in ``conftest.py``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "use httpx2" deprecation notice of starlette's TestClient
    from starlette.testclient import TestClient

from api.main import create_app
from cake_shared.models import Base
from cake_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class BundledTeacher:
    """Same attributes as the session fixtures' SavedTeacher."""

    path: Path
    eval_path: Path
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass
class FakeQueue:
    """Stands in for the broker only: records what would have been sent to Celery."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    fail: bool = False
    broker_up: bool = True

    def enqueue_job(self, job_id: str, queue: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((job_id, queue))

    def ping_broker(self) -> None:
        if not self.broker_up:
            raise ConnectionError("broker down")


def make_settings(root: Path, **overrides: Any) -> Settings:
    """Everything explicit, so CAKE_* variables of the environment cannot leak in."""
    values: dict[str, Any] = {
        "data_dir": root,
        "database_url": f"sqlite:///{root / 'cake.db'}",
        "store_url": f"file://{root / 'store'}",
        "broker_url": None,
        "default_queue": "auto",
    }
    values.update(overrides)
    return Settings(**values)


def make_app(root: Path, **overrides: Any) -> FastAPI:
    app = create_app(make_settings(root, **overrides))
    Base.metadata.create_all(app.state.ctx.engine)
    return app


def upload_teacher(
    client: TestClient,
    path: Path,
    input_shape: Any,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> Any:
    data = {"input_shape": input_shape if isinstance(input_shape, str) else str(list(input_shape))}
    data.update({k: str(v) for k, v in fields.items()})
    with open(path, "rb") as fh:
        return client.post(
            "/v1/teachers", files={"file": (path.name, fh)}, data=data, headers=headers or {}
        )


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """A problem document with every required field and nothing internal in it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    for key in ("type", "title", "status", "detail", "code"):
        assert key in body, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert_no_leak(response.text)
    return body


def assert_no_leak(text: str) -> None:
    assert "Traceback" not in text
    assert "/tmp" not in text and "pytest-of" not in text
    assert str(ROOT) not in text
