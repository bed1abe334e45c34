"""The job queues' names (``cake_shared.queue_names``): one definition, read by everything that
validates, chooses, publishes, consumes or counts a queue, and an unknown name refused when the
settings are read instead of silently meaning ``cpu``."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from cake_cli.service import parse_queues
from cake_shared import queue_names, workers
from cake_shared.queue_names import AUTO, FALLBACK_QUEUE, QUEUE_CHOICES, QUEUES, queue_or_fallback
from cake_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_cake_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets counts: no ``CAKE_*`` of the environment leaks into ``Settings``."""
    for name in [n for n in os.environ if n.startswith("CAKE_")]:
        monkeypatch.delenv(name)


def test_the_names() -> None:
    assert QUEUES == ("gpu", "cpu")
    assert QUEUE_CHOICES == (AUTO, *QUEUES) == ("auto", "gpu", "cpu")
    assert FALLBACK_QUEUE in QUEUES


@pytest.mark.parametrize("typo", ["gpux", "cpu ,gpu", "GPU1", "", "default"])
def test_settings_refuse_an_unknown_default_queue_from_the_environment(
    no_cake_env: None, monkeypatch: pytest.MonkeyPatch, typo: str
) -> None:
    monkeypatch.setenv("CAKE_DEFAULT_QUEUE", typo)
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = str(caught.value)
    assert f"CAKE_DEFAULT_QUEUE is {typo!r}" in message
    assert "auto, gpu, cpu" in message


@pytest.mark.parametrize("name", QUEUE_CHOICES)
def test_settings_take_every_known_name(
    no_cake_env: None, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("CAKE_DEFAULT_QUEUE", f" {name.upper()} ")
    assert Settings().default_queue == name


def test_routing_never_turns_an_unknown_name_into_cpu() -> None:
    gpu_worker = SimpleNamespace(device="cuda", queues=["gpu", "cpu"])
    cpu_worker = SimpleNamespace(device="cpu", queues=["cpu"])
    assert workers.pick_queue("auto", [cpu_worker]) == "cpu"
    assert workers.pick_queue("auto", [cpu_worker, gpu_worker]) == "gpu"
    assert workers.pick_queue("gpu", []) == "gpu"  # configured: chosen even with no worker
    with pytest.raises(ValueError, match="unknown queue 'gpux'"):
        workers.pick_queue("gpux", [gpu_worker])


def test_publishing_consuming_and_the_cli_read_the_same_names(
    no_cake_env: None, tmp_path: Path
) -> None:
    from cake_shared import queue

    assert queue.QUEUES is QUEUES and workers.QUEUES is QUEUES
    publisher = queue.CeleryQueue(Settings(data_dir=tmp_path / "data"))
    app = publisher.app
    assert tuple(q.name for q in app.conf.task_queues) == QUEUES
    assert app.conf.task_default_queue == FALLBACK_QUEUE
    with pytest.raises(ValueError, match="unknown queue 'gpux'"):
        publisher.enqueue("job_x", "gpux")  # refused before the broker is asked
    assert parse_queues("cpu, gpu,cpu") == "cpu,gpu"
    with pytest.raises(ValueError, match="subset of gpu, cpu"):
        parse_queues("cpu,gpux")
    # Rows of jobs only ever hold a real queue; an older row with another word is still
    # published where a worker listens.
    assert [queue_or_fallback(q) for q in ("gpu", "cpu", "fast", None)] == [
        "gpu",
        "cpu",
        FALLBACK_QUEUE,
        FALLBACK_QUEUE,
    ]


def _spelled_out(node: ast.AST) -> bool:
    """A tuple, list, set or dict (by its keys) of exactly the queue names, as literals."""
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        items: list[ast.expr | None] = list(node.elts)
    elif isinstance(node, ast.Dict):
        items = list(node.keys)
    else:
        return False
    words = [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
    return len(words) == len(items) >= 2 and set(words) == set(QUEUES)


def test_no_other_module_spells_the_queue_names_out() -> None:
    """A second ``("gpu", "cpu")`` in code would be a second definition to keep in step."""
    home = Path(queue_names.__file__).resolve()
    found = []
    for package in ("api", "cake_shared", "cake_cli", "worker", "cake_client"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.resolve() == home:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if _spelled_out(node):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
