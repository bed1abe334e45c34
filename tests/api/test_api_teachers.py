"""Teachers: upload (checked, content-addressed), list, get, delete, and every way to fail."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch
from api_support import BundledTeacher, TestClient, assert_problem, upload_teacher


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_describes_the_teacher(client: TestClient, digits: BundledTeacher) -> None:
    r = upload_teacher(client, digits.path, digits.input_shape, name="digits cnn")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("tch_")
    assert body["object"] == "teacher"
    assert body["name"] == "digits cnn"
    assert body["sha256"] == _sha256(digits.path)
    assert body["size_bytes"] == digits.path.stat().st_size
    assert body["input_shape"] == list(digits.input_shape)
    assert body["num_classes"] == digits.num_classes
    assert body["parameters"] > 1000
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert r.headers["location"] == f"/v1/teachers/{body['id']}"
    assert client.get(f"/v1/teachers/{body['id']}").json() == body


def test_same_file_is_stored_once(client: TestClient, wine: BundledTeacher) -> None:
    first = upload_teacher(client, wine.path, "13").json()  # "13" and [13] both accepted
    second = upload_teacher(client, wine.path, [13], num_classes=3).json()
    assert first["id"] != second["id"]
    assert first["sha256"] == second["sha256"] == _sha256(wine.path)
    store = client.app.state.ctx.store  # type: ignore[attr-defined]
    assert store.list("teachers/") == [f"teachers/{first['sha256']}"]
    uploads = client.app.state.ctx.upload_dir  # type: ignore[attr-defined]
    assert list(uploads.iterdir()) == [], "temporary upload files are removed"


def test_list_paginates_newest_first(client: TestClient, wine: BundledTeacher) -> None:
    ids = [upload_teacher(client, wine.path, [13]).json()["id"] for _ in range(3)]
    page1 = client.get("/v1/teachers", params={"limit": 2}).json()
    assert page1["object"] == "list"
    assert [t["id"] for t in page1["data"]] == ids[::-1][:2]
    assert page1["has_more"] is True
    assert page1["next_after"] == ids[1]
    page2 = client.get("/v1/teachers", params={"limit": 2, "after": page1["next_after"]}).json()
    assert [t["id"] for t in page2["data"]] == [ids[0]]
    assert page2["has_more"] is False and page2["next_after"] is None
    assert len(client.get("/v1/teachers").json()["data"]) == 3
    assert_problem(client.get("/v1/teachers", params={"limit": 0}), 422, "validation_error")
    assert_problem(client.get("/v1/teachers", params={"limit": 101}), 422, "validation_error")


def test_get_unknown_teacher_is_404(client: TestClient) -> None:
    body = assert_problem(client.get("/v1/teachers/tch_nope"), 404, "not_found")
    assert "tch_nope" in body["detail"]
    assert_problem(client.delete("/v1/teachers/tch_nope"), 404, "not_found")


def test_delete_refused_while_a_job_uses_it(client: TestClient, wine: BundledTeacher) -> None:
    teacher = upload_teacher(client, wine.path, [13]).json()
    job = client.post("/v1/jobs", json={"teacher_id": teacher["id"]}).json()
    body = assert_problem(client.delete(f"/v1/teachers/{teacher['id']}"), 409, "conflict")
    assert "queued or running" in body["detail"]
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/teachers/{teacher['id']}").status_code == 204
    assert_problem(client.get(f"/v1/teachers/{teacher['id']}"), 404, "not_found")
    assert teacher["id"] not in [t["id"] for t in client.get("/v1/teachers").json()["data"]]
    # The finished job still names the teacher it came from; new jobs cannot use it.
    assert client.get(f"/v1/jobs/{job['id']}").json()["teacher_id"] == teacher["id"]
    assert_problem(client.post("/v1/jobs", json={"teacher_id": teacher["id"]}), 404, "not_found")
    assert_problem(client.delete(f"/v1/teachers/{teacher['id']}"), 404, "not_found")


def test_delete_keeps_a_file_another_teacher_shares(
    client: TestClient, wine: BundledTeacher
) -> None:
    a = upload_teacher(client, wine.path, [13]).json()
    b = upload_teacher(client, wine.path, [13]).json()
    store = client.app.state.ctx.store  # type: ignore[attr-defined]
    key = f"teachers/{a['sha256']}"
    assert client.delete(f"/v1/teachers/{a['id']}").status_code == 204
    assert store.exists(key)
    assert client.delete(f"/v1/teachers/{b['id']}").status_code == 204
    assert not store.exists(key)


# --------------------------------------------------------------------------------------------
# invalid teachers
# --------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("garbage", "not a TorchScript archive (unrecognised binary data)"),
        ("text", "file is a text file"),
        ("pickle", "file is a pickle"),
        ("state_dict", "torch.save checkpoint"),
        ("truncated", "truncated or corrupt"),
    ],
)
def test_invalid_files_are_refused_with_the_reason(
    client: TestClient, tmp_path: Path, digits: BundledTeacher, kind: str, expected: str
) -> None:
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        _write(path, bytes(range(256)) * 64)
    elif kind == "text":
        _write(path, b"this is not a model\n" * 10)
    elif kind == "pickle":
        _write(path, pickle.dumps({"weights": [1.0, 2.0]}))
    elif kind == "state_dict":
        torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    else:
        data = digits.path.read_bytes()
        _write(path, data[: len(data) // 2])
    body = assert_problem(upload_teacher(client, path, [1, 8, 8]), 422, "teacher_invalid")
    assert expected in body["detail"]
    assert client.get("/v1/teachers").json()["data"] == []


def test_wrong_input_shape_names_the_shapes(client: TestClient, digits: BundledTeacher) -> None:
    body = assert_problem(upload_teacher(client, digits.path, [13]), 422, "teacher_invalid")
    assert "[4, 13]" in body["detail"]


def test_num_classes_must_match_the_probe(client: TestClient, wine: BundledTeacher) -> None:
    body = assert_problem(
        upload_teacher(client, wine.path, [13], num_classes=5), 422, "teacher_invalid"
    )
    assert "3 output classes but 5 were expected" in body["detail"]


@pytest.mark.parametrize(
    ("shape", "loc"),
    [("[1, -8]", "input_shape"), ("cat", "input_shape"), ("[1,1,1,1,1]", "input_shape")],
)
def test_bad_input_shape_is_a_validation_error(
    client: TestClient, wine: BundledTeacher, shape: str, loc: str
) -> None:
    body = assert_problem(upload_teacher(client, wine.path, shape), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", loc]


def test_form_parts_are_checked(client: TestClient, wine: BundledTeacher) -> None:
    body = assert_problem(
        client.post("/v1/teachers", files={"input_shape": (None, "[13]")}),
        422,
        "validation_error",
    )
    assert {"loc": ["body", "file"], "msg": "form part is required"} in body["errors"]
    with open(wine.path, "rb") as fh:
        r = client.post(
            "/v1/teachers", files={"file": fh}, data={"input_shape": "[13]", "colour": "red"}
        )
    assert assert_problem(r, 422, "validation_error")["errors"][0]["loc"] == ["body", "colour"]
    r = client.post("/v1/teachers", json={"input_shape": [13]})
    assert_problem(r, 415, "unsupported_media_type")


def test_upload_over_the_cap_is_413_and_stores_nothing(
    make_client: type, digits: BundledTeacher
) -> None:
    client = make_client(max_upload_bytes=10_000)
    body = assert_problem(
        upload_teacher(client, digits.path, digits.input_shape), 413, "payload_too_large"
    )
    assert "10000 bytes" in body["detail"]
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    assert ctx.store.list("") == []
    assert list(ctx.upload_dir.iterdir()) == []
    assert client.get("/v1/teachers").json()["data"] == []


def test_idempotent_upload(
    client: TestClient, wine: BundledTeacher, digits: BundledTeacher
) -> None:
    key = {"Idempotency-Key": "upload-1"}
    first = upload_teacher(client, wine.path, [13], headers=key, name="w")
    again = upload_teacher(client, wine.path, [13], headers=key, name="w")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(client.get("/v1/teachers").json()["data"]) == 1
    other = upload_teacher(client, digits.path, [1, 8, 8], headers=key, name="w")
    assert_problem(other, 409, "conflict")


def test_the_memory_cap_applies_to_the_check(make_client: type, digits: BundledTeacher) -> None:
    client = make_client(teacher_check_memory_bytes=300 << 20)
    body = assert_problem(upload_teacher(client, digits.path, [1, 8, 8]), 422, "teacher_invalid")
    assert "needs more than 300 MiB of memory" in body["detail"]
