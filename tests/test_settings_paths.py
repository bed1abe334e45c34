"""Locations are resolved to absolute values once, where the settings are read, and handed to
children as such; an unknown queue name is a start-up error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api import sandbox
from cake_shared.settings import Settings, absolute_database_url, absolute_store_url


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith("CAKE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path.resolve()


def test_relative_locations_become_absolute_where_they_are_read(bare: Path) -> None:
    settings = Settings()
    assert settings.data_dir == bare / "cake-data"
    assert settings.child_env() == {
        "CAKE_DATA_DIR": str(bare / "cake-data"),
        "CAKE_DATABASE_URL": f"sqlite:///{bare / 'cake-data' / 'cake.db'}",
        "CAKE_STORE_URL": f"file://{bare / 'cake-data' / 'store'}",
        "CAKE_BROKER_URL": "filesystem://",
    }
    other = Settings(data_dir=Path("d"), database_url="sqlite:///x.db", store_url="file://./st")
    assert other.data_dir == bare / "d"
    assert other.resolved_database_url() == f"sqlite:///{bare / 'x.db'}"
    assert other.resolved_store_url() == f"file://{bare / 'st'}"
    # What is absolute or not a local path stays as it is.
    assert absolute_database_url("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert absolute_database_url("sqlite://") == "sqlite://"
    assert absolute_database_url("sqlite:///:memory:") == "sqlite:///:memory:"
    pg = "postgresql://cake:secret@db:5432/cake"
    assert absolute_database_url(pg) == pg
    assert absolute_store_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert absolute_store_url("file:///abs/store") == "file:///abs/store"
    assert absolute_store_url("store") == f"file://{bare / 'store'}"


def test_pinned_settings_mean_the_same_in_another_folder(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Settings().child_env()
    elsewhere = bare / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().child_env() == env


def test_the_check_sandbox_gets_the_settings(bare: Path) -> None:
    env = Settings().child_env()
    result = sandbox.run("api.sandbox:child_settings", timeout_s=120, env=env)
    assert result.outcome == "ok", result
    assert {k: result.value.get(k) for k in env} == env


def test_an_unknown_default_queue_stops_the_worker_at_start(bare: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    env["CAKE_DEFAULT_QUEUE"] = "fast"
    run = subprocess.run(
        [sys.executable, "-m", "cake_cli.main", "worker"],
        cwd=bare,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAKE_DEFAULT_QUEUE is 'fast'" in lines[0], run.stderr
    assert not (bare / "cake-data").exists()  # refused before touching anything
