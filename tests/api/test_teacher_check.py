"""``api.teacher_check`` apart from HTTP: what the fork server preloads, and the by-hand CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from api_support import ROOT, BundledTeacher

from api import teacher_check


@pytest.mark.parametrize("module", ["api.teacher_check", "api.catalog"])
def test_the_preloaded_modules_import_neither_torch_nor_fastapi(module: str) -> None:
    """The fork server preloads these modules, and every check child inherits what they
    imported: FastAPI there would eat into the memory cap (with a tight cap the child then has
    no memory left to answer), torch there would load in the API process. Of ``cake_shared``
    only the sandbox primitives (standard library only) may come along: its settings, models
    and store bring pydantic, SQLAlchemy and boto3."""
    code = (
        f"import sys, {module}; "
        "heavy = {m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'starlette', 'pydantic', 'torch', 'sqlalchemy', 'boto3'}; "
        "shared = {m for m in sys.modules if m.startswith('cake_shared.')} - "
        "{'cake_shared.sandbox'}; "
        "print(sorted(heavy | shared))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_check_by_hand_prints_the_result(
    wine: BundledTeacher, capsys: pytest.CaptureFixture[str]
) -> None:
    assert teacher_check.main([str(wine.path), "13"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "input_shape": [13],
        "num_classes": 3,
        "parameters": 5251,
    }
    assert teacher_check.main([str(wine.path), "[13]", "5"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["code"] == "teacher_invalid"
    assert "3 output classes but 5 were expected" in answer["message"]
    assert teacher_check.main([str(wine.path), "x"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert (answer["code"], answer["field"]) == ("validation_error", "input_shape")
