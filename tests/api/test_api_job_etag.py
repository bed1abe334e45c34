"""Conditional GET of a job: ``ETag`` on ``GET /v1/jobs/{id}`` and ``If-None-Match`` -> 304.

The job changes here the way it changes in production: the API's own cancel, and the worker's
writes through ``cake_shared.jobs`` (claim, progress, finish) on the app's database, so the
tag is checked against every kind of write a poller can miss.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_support import BundledTeacher, TestClient, assert_problem, new_job

from api.conditional import etag_matches
from api.serializers import job_out
from cake_shared import jobs, tenants
from cake_shared.status import JobPhase, JobStatus


@pytest.fixture
def job_id(client: TestClient, wine: BundledTeacher) -> str:
    return new_job(client, wine, {})


def _get(client: TestClient, job_id: str, if_none_match: str | None = None) -> Any:
    headers = {} if if_none_match is None else {"If-None-Match": if_none_match}
    return client.get(f"/v1/jobs/{job_id}", headers=headers)


def _tag(client: TestClient, job_id: str) -> str:
    response = _get(client, job_id)
    assert response.status_code == 200, response.text
    return str(response.headers["etag"])


def test_the_tag_is_weak_and_stays_while_nothing_changes(client: TestClient, job_id: str) -> None:
    first = _get(client, job_id)
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert tag.startswith('W/"') and tag.endswith('"') and len(tag) > 6
    second = _get(client, job_id)
    assert second.headers["etag"] == tag
    assert second.json() == first.json()
    # Another job has another tag, even with the same state.
    other = client.post("/v1/jobs", json={"teacher_id": first.json()["teacher_id"]}).json()
    assert _tag(client, other["id"]) != tag


@pytest.mark.parametrize(
    "header",
    [
        "{tag}",
        "{bare}",  # the strong form of the same tag: If-None-Match compares weakly
        "*",
        '"stale", {tag}',
        'W/"stale",{bare} , "x,y"',
    ],
)
def test_a_matching_if_none_match_is_304_with_an_empty_body(
    client: TestClient, job_id: str, header: str
) -> None:
    tag = _tag(client, job_id)
    sent = header.format(tag=tag, bare=tag.removeprefix("W/"))
    response = _get(client, job_id, sent)
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == tag
    assert "content-type" not in response.headers


@pytest.mark.parametrize("header", ['"stale"', 'W/"stale", "older"', "", "garbage"])
def test_a_stale_or_malformed_if_none_match_gets_the_job(
    client: TestClient, job_id: str, header: str
) -> None:
    tag = _tag(client, job_id)
    response = _get(client, job_id, header)
    assert response.status_code == 200
    assert response.json()["id"] == job_id
    assert response.headers["etag"] == tag


def test_the_304_does_not_build_the_body(
    client: TestClient, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = _tag(client, job_id)

    def no_serialising(row: Any) -> dict[str, Any]:
        raise AssertionError("a 304 must not serialise the job")

    monkeypatch.setattr("api.routes.jobs.job_out", no_serialising)
    assert _get(client, job_id, tag).status_code == 304


def test_an_unchanged_job_is_sent_from_its_last_body(
    client: TestClient, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain poll (no ``If-None-Match``) of an unchanged job sends the bytes built for it
    last time; once the job changed, the body is built afresh from the changed row."""
    first = _get(client, job_id)
    built: list[str] = []
    real_job_out = job_out

    def counting(row: Any) -> dict[str, Any]:
        built.append(row.id)
        return real_job_out(row)

    monkeypatch.setattr("api.routes.jobs.job_out", counting)
    again = _get(client, job_id)
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert again.headers["content-type"] == "application/json"
    assert built == []
    client.post(f"/v1/jobs/{job_id}/cancel")  # its answer is built too
    built.clear()
    changed = _get(client, job_id)
    assert changed.json()["status"] == "canceled" and built == [job_id]
    assert changed.headers["etag"] != first.headers["etag"]


def test_cancel_changes_the_tag(client: TestClient, job_id: str) -> None:
    tag = _tag(client, job_id)
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    response = _get(client, job_id, tag)
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    new_tag = response.headers["etag"]
    assert new_tag != tag
    assert _get(client, job_id, new_tag).status_code == 304


def test_every_worker_write_changes_the_tag(client: TestClient, job_id: str) -> None:
    """Claim, progress, metrics, and the end of the job: a poller holding the previous tag
    gets each new state as a 200, and each new tag is a 304 until the next write; a heartbeat
    in between is no change."""
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    seen = [_tag(client, job_id)]

    def changed() -> dict[str, Any]:
        response = _get(client, job_id, seen[-1])
        assert response.status_code == 200, "the job changed but the tag did not"
        tag = response.headers["etag"]
        assert tag not in seen
        assert _get(client, job_id, tag).status_code == 304
        seen.append(tag)
        return dict(response.json())

    token = jobs.claim_job(ctx, job_id, "worker-1")
    assert token is not None
    assert changed()["status"] == JobStatus.RUNNING

    # A heartbeat changes nothing in the body, so the tag stays (no 200 every second).
    assert jobs.heartbeat(ctx, job_id, token)
    assert _get(client, job_id, seen[-1]).status_code == 304

    assert jobs.update_progress(ctx, job_id, token, JobPhase.TRAINING, 0.4)
    body = changed()
    assert (body["phase"], body["progress"]) == (JobPhase.TRAINING, 0.4)

    assert jobs.update_progress(ctx, job_id, token, JobPhase.TRAINING, 0.4, {"loss": 0.25})
    assert changed()["metrics"] == {"loss": 0.25}

    error = {"code": "internal", "message": "out of memory"}
    assert jobs.finish_job(ctx, job_id, token, JobStatus.FAILED, error=error)
    body = changed()
    assert body["status"] == JobStatus.FAILED and body["error"] == error


def test_another_tenants_job_is_404_whatever_if_none_match_says(
    make_client: Any, wine: BundledTeacher
) -> None:
    client: TestClient = make_client(auth_cache_s=0.0)
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    keys = {}
    with ctx.sessionmaker() as session:
        for tenant in ("acme", "other"):
            keys[tenant] = {"Authorization": f"Bearer {tenants.create_key(session, tenant).secret}"}
    job_id = new_job(client, wine, keys["acme"])
    owner = client.get(f"/v1/jobs/{job_id}", headers=keys["acme"])
    assert owner.status_code == 200
    tag = owner.headers["etag"]

    for header in (tag, "*"):
        stranger = client.get(
            f"/v1/jobs/{job_id}", headers={**keys["other"], "If-None-Match": header}
        )
        assert_problem(stranger, 404, "not_found")
        assert "etag" not in stranger.headers
    unknown = client.get("/v1/jobs/job_unknown", headers={**keys["acme"], "If-None-Match": "*"})
    assert_problem(unknown, 404, "not_found")
    assert (
        client.get(f"/v1/jobs/{job_id}", headers={**keys["acme"], "If-None-Match": tag}).status_code
        == 304
    )


def test_openapi_documents_the_etag_and_the_304(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/jobs/{id}"]["get"]
    assert "ETag" in operation["responses"]["200"]["headers"]
    assert "ETag" in operation["responses"]["304"]["headers"]
    assert "content" not in operation["responses"]["304"]
    assert [p["name"] for p in operation["parameters"] if p["in"] == "header"] == ["if-none-match"]


def test_etag_matches_reads_lists_and_quoted_commas() -> None:
    assert etag_matches('"a,b", W/"c"', 'W/"c"')
    assert etag_matches('"a,b"', '"a,b"')
    assert not etag_matches('"a,b"', '"a"')
    assert not etag_matches("W/c", 'W/"c"')  # unquoted: not an entity-tag
    assert etag_matches(" * ", 'W/"c"')
