"""The job status, phase and webhook words (``cake_shared.status``): one spelling of each, the
strings of API.md on the wire and in the database, and a module light enough for the client.

- the members are the documented strings: equal to them, formatted and JSON-encoded as them;
- the derived sets split the statuses (terminal vs active) and the running phases are the
  engine's, in its order (``cake_core.pipeline.PHASES``);
- the API's response models list exactly these words in ``/openapi.json``;
- ``cake_client`` (and the module itself) import nothing heavy: no database, pydantic or torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from enum import StrEnum
from pathlib import Path

import pytest

from cake_shared.status import (
    ACTIVE_STATUSES,
    RUNNING_PHASES,
    TERMINAL_STATUSES,
    JobPhase,
    JobStatus,
    WebhookStatus,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_words_are_the_documented_strings() -> None:
    assert [s.value for s in JobStatus] == ["queued", "running", "succeeded", "failed", "canceled"]
    assert [p.value for p in JobPhase] == [
        "queued",
        "synthesizing",
        "training",
        "evaluating",
        "exporting",
        "succeeded",
        "failed",
        "canceled",
    ]
    assert [w.value for w in WebhookStatus] == ["waiting", "pending", "delivered", "failed"]


@pytest.mark.parametrize("enum", [JobStatus, JobPhase, WebhookStatus])
def test_members_are_their_strings(enum: type[StrEnum]) -> None:
    for member in enum:
        assert isinstance(member, str)
        assert member == member.value and hash(member) == hash(member.value)
        assert str(member) == f"{member}" == member.value
        assert json.dumps({"status": member}) == json.dumps({"status": member.value})
        assert enum(member.value) is member


def test_derived_sets() -> None:
    assert {"succeeded", "failed", "canceled"} == TERMINAL_STATUSES
    assert {"queued", "running"} == ACTIVE_STATUSES
    assert TERMINAL_STATUSES.isdisjoint(ACTIVE_STATUSES)
    assert set(JobStatus) == TERMINAL_STATUSES | ACTIVE_STATUSES
    assert "succeeded" in TERMINAL_STATUSES and "running" not in TERMINAL_STATUSES
    # the phase of a queued or ended job is its status; a running job is in a running phase
    assert {JobPhase(s) for s in {JobStatus.QUEUED, *TERMINAL_STATUSES}} | set(RUNNING_PHASES) == (
        set(JobPhase)
    )
    assert "running" not in {p.value for p in JobPhase}


def test_running_phases_are_the_engines() -> None:
    from cake_core.pipeline import PHASES

    assert tuple(RUNNING_PHASES) == PHASES


def test_openapi_lists_the_words() -> None:
    from api.schemas import Job, JobWebhook

    def enum_of(model: type, field: str) -> list[str]:
        schema = model.model_json_schema()  # type: ignore[attr-defined]
        prop = schema["properties"][field]
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        return (schema.get("$defs", {}).get(ref) or prop)["enum"]

    assert enum_of(Job, "status") == [s.value for s in JobStatus]
    assert enum_of(Job, "phase") == [p.value for p in JobPhase]
    assert enum_of(JobWebhook, "status") == [w.value for w in WebhookStatus]


def test_the_client_imports_nothing_heavy() -> None:
    heavy = ("torch", "numpy", "sqlalchemy", "pydantic", "fastapi", "celery", "cake_core")
    code = (
        "import sys, cake_client, cake_shared.status; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules)); "
        "print(sorted(m for m in sys.modules if m.startswith('cake_shared')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded, shared = out.stdout.strip().splitlines()
    assert loaded == "[]"
    # cake_shared.signing: the webhook signature rule, standard library only like status;
    # cake_shared.retry: the backoff formula the transport shares (standard library + tenacity);
    # cake_shared.student_files: the student's file names and the -o rule (standard library).
    assert shared == (
        "['cake_shared', 'cake_shared.retry', 'cake_shared.signing', 'cake_shared.status', "
        "'cake_shared.student_files']"
    )
