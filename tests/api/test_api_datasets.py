"""Evaluation data sets: .npz checked with numpy, no pickles, in bounded memory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_support import BundledTeacher, TestClient, assert_problem


def _post(client: TestClient, path: Path, **headers: str) -> Any:
    with open(path, "rb") as fh:
        return client.post(
            "/v1/datasets", files={"file": (path.name, fh)}, data={"name": "eval"}, headers=headers
        )


def test_upload_describes_the_data_set(client: TestClient, digits: BundledTeacher) -> None:
    r = _post(client, digits.eval_path)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["id"].startswith("ds_") and ds["object"] == "dataset"
    with np.load(digits.eval_path) as data:
        n, y_max = len(data["y"]), int(data["y"].max())
    assert ds["num_examples"] == n
    assert ds["input_shape"] == [1, 8, 8]
    assert ds["num_classes"] == y_max + 1
    assert ds["sha256"] == hashlib.sha256(digits.eval_path.read_bytes()).hexdigest()
    assert ds["name"] == "eval" and ds["created_at"]
    assert client.get(f"/v1/datasets/{ds['id']}").json() == ds
    assert [d["id"] for d in client.get("/v1/datasets").json()["data"]] == [ds["id"]]
    store = client.app.state.ctx.store  # type: ignore[attr-defined]
    assert store.exists(f"datasets/{ds['sha256']}")
    assert_problem(client.get("/v1/datasets/ds_nope"), 404, "not_found")


def test_idempotent_dataset_upload(client: TestClient, wine: BundledTeacher) -> None:
    first = _post(client, wine.eval_path, **{"Idempotency-Key": "ds-1"})
    again = _post(client, wine.eval_path, **{"Idempotency-Key": "ds-1"})
    assert again.json() == first.json() and again.status_code == 201
    assert len(client.get("/v1/datasets").json()["data"]) == 1


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": np.zeros((3, 2), np.float32)}, "arrays named 'x' and 'y'"),
        ({"x": np.array([[np.nan, 1.0]], np.float32), "y": np.array([0])}, "finite"),
        ({"x": np.zeros((2, 2), np.int64), "y": np.array([0, 1])}, "floating point"),
        ({"x": np.zeros((2, 2), np.float32), "y": np.array([0.0, 1.0])}, "integer class"),
        ({"x": np.zeros((2, 2), np.float32), "y": np.array([0, 1, 2])}, "expected [2]"),
        ({"x": np.zeros((2, 2), np.float32), "y": np.array([0, -1])}, "negative class"),
        ({"x": np.zeros((0, 2), np.float32), "y": np.zeros(0, np.int64)}, "empty"),
        ({"x": np.zeros(3, np.float32), "y": np.array([0, 1, 2])}, "[N, *input_shape]"),
        ({"x": np.array([[object()]], dtype=object), "y": np.array([0])}, "Python objects"),
    ],
)
def test_invalid_data_sets(
    client: TestClient, tmp_path: Path, arrays: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    body = assert_problem(_post(client, path), 422, "dataset_invalid")
    assert expected in body["detail"]
    assert client.get("/v1/datasets").json()["data"] == []


def test_not_an_npz(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n")
    assert "not an .npz" in assert_problem(_post(client, path), 422, "dataset_invalid")["detail"]


def test_compressed_npz_is_fine(client: TestClient, tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(
        path, x=rng.normal(size=(3000, 13)).astype(np.float32), y=rng.integers(0, 3, 3000)
    )
    r = _post(client, path)
    assert r.status_code == 201 and r.json()["num_examples"] == 3000
