"""Each app publishes to the broker of its own settings: two apps built in one process with
different brokers (two Redis databases, or two embedded filesystem brokers) each put the job
created through them on their own broker, and neither on the broker of the environment."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest
from api_support import BundledTeacher, TestClient, make_app, upload_teacher
from redis_support import empty_redis_databases

from cake_shared.queue import filesystem_folders
from cake_shared.settings import Settings


def _job_ids(raw_messages: list[bytes]) -> list[str]:
    """The job ids carried by kombu messages (a ``cake.run_job`` task's one argument)."""
    ids = []
    for raw in raw_messages:
        message = json.loads(raw)
        assert message["headers"]["task"] == "cake.run_job"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.extend(args)
    return ids


def _on_redis(url: str, queue: str = "cpu") -> list[str]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return _job_ids(client.lrange(queue, 0, -1))
    finally:
        client.close()


def _on_filesystem(data_dir: Path) -> list[str]:
    folder = filesystem_folders(Settings(data_dir=data_dir))["data"]
    return _job_ids([path.read_bytes() for path in sorted(folder.glob("*.msg"))])


def _create_job(app: object, teacher: BundledTeacher) -> str:
    client = TestClient(app, raise_server_exceptions=False)  # type: ignore[arg-type]
    uploaded = upload_teacher(client, teacher.path, list(teacher.input_shape))
    assert uploaded.status_code == 201, uploaded.text
    job = client.post("/v1/jobs", json={"teacher_id": uploaded.json()["id"]})
    assert job.status_code == 202, job.text
    return str(job.json()["id"])


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_two_apps_in_one_process_publish_each_to_its_own_broker(
    tmp_path: Path, wine: BundledTeacher, monkeypatch: pytest.MonkeyPatch, broker: str
) -> None:
    roots = [tmp_path / "a", tmp_path / "b"]
    # The environment names a third broker; an app that fell back to it would publish there
    # (filesystem) or fail to publish at all (nothing listens on port 1).
    monkeypatch.setenv("CAKE_DATA_DIR", str(tmp_path / "environment"))
    monkeypatch.setenv("CAKE_BROKER_URL", "redis://127.0.0.1:1/0")
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            urls = stack.enter_context(empty_redis_databases(2))
        else:
            urls = ["filesystem://"] * 2  # each under its own data folder
        apps = [make_app(root, broker_url=url) for root, url in zip(roots, urls, strict=True)]
        for app in apps:
            stack.callback(app.state.ctx.close)  # type: ignore[attr-defined]
        jobs = [_create_job(app, wine) for app in apps]
        if broker == "redis":
            published = [_on_redis(url) for url in urls]
        else:
            published = [_on_filesystem(root) for root in roots]
            assert _on_filesystem(tmp_path / "environment") == []
    assert published == [[jobs[0]], [jobs[1]]]
