"""``input_shape`` is parsed strictly: a JSON array of positive integers, or ``1,28,28``.
Anything else, broken JSON such as ``[13,`` included, is a 422 that names the field, on the
teacher upload and on the one-shot job form alike; the Python client and the CLI agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from api_support import ROOT, BundledTeacher, TestClient, assert_problem, upload_teacher

from api.uploads import parse_input_shape_field
from cake_client import shape_list

ACCEPTED = [
    ("[13]", [13]),
    ("13", [13]),
    (" [ 13 ] ", [13]),
    ("[1,28,28]", [1, 28, 28]),
    ("1,28,28", [1, 28, 28]),
    ("1, 28, 28", [1, 28, 28]),
]
REFUSED = [
    "[13,",  # broken JSON: once read as [13]
    "[13",
    "13,",
    ",13",
    "1,,28",
    "(13)",
    "(1,28,28)",
    "[]",
    "",
    " ",
    "[0]",
    "0",
    "-13",
    "[-1, 8]",
    "[1.5]",
    "1.5",
    "[true]",
    '["13"]',
    "[[13]]",
    '{"shape": [13]}',
    "null",
    "13 x",
    "1;28;28",
    "cat",
    "\u0661\u0663",  # Arabic-Indic digits for 13
    "9" * 5000,
    "[" + "9" * 5000 + "]",
]


@pytest.mark.parametrize(("text", "shape"), ACCEPTED)
def test_accepted_forms(text: str, shape: list[int]) -> None:
    assert parse_input_shape_field(text, ["body", "input_shape"]) == shape
    assert shape_list(text) == shape


@pytest.mark.parametrize("text", REFUSED)
def test_anything_else_is_a_422_naming_the_field(text: str) -> None:
    from api.errors import ApiError

    with pytest.raises(ApiError) as caught:
        parse_input_shape_field(text, ["body", "input_shape"])
    assert caught.value.status == 422
    with pytest.raises(ValueError):
        shape_list(text)


@pytest.mark.parametrize("text", ["[13,", "13,", "(13)", "[0]", "13 x"])
def test_teacher_upload_refuses_and_stores_nothing(
    client: TestClient, wine: BundledTeacher, text: str
) -> None:
    body = assert_problem(upload_teacher(client, wine.path, text), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "input_shape"], body
    assert "input_shape" in body["detail"]
    assert client.get("/v1/teachers").json()["data"] == []


@pytest.mark.parametrize("text", ["[13]", "13"])
def test_teacher_upload_takes_both_forms(
    client: TestClient, wine: BundledTeacher, text: str
) -> None:
    response = upload_teacher(client, wine.path, text)
    assert response.status_code == 201, response.text
    assert response.json()["input_shape"] == [13]


def test_one_shot_job_refuses_broken_json(client: TestClient, wine: BundledTeacher) -> None:
    with open(wine.path, "rb") as fh:
        response = client.post(
            "/v1/jobs",
            files={"teacher": ("wine.pt", fh)},
            data={"input_shape": "[13,", "spec": json.dumps({"preset": "fast"})},
        )
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "input_shape"], body
    assert client.get("/v1/teachers").json()["data"] == []
    assert client.get("/v1/jobs").json()["data"] == []


def test_cli_refuses_broken_json_before_sending_anything(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "cake_cli.main",
            "teachers",
            "upload",
            str(ROOT / "examples" / "wine_mlp.pt"),
            "--input-shape",
            "[13,",
            "--url",
            "http://127.0.0.1:9",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "input shape '[13,'" in run.stderr, run.stderr
