"""API keys, tenants and per-tenant limits, through the real app and its SQLite database.

Keys are created the way ``cake keys create`` creates them (``cake_shared.tenants``) in the
app's own database; every route of the OpenAPI document is then tried with another tenant's
key and must answer 404, exactly like an unknown id.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest
from api_support import BundledTeacher, TestClient, assert_problem, upload_teacher

from cake_shared import tenants
from cake_shared.models import Artifact, Job, Tenant, utcnow


def _key(client: TestClient, tenant: str) -> dict[str, str]:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        secret = tenants.create_key(session, tenant).secret
    return {"Authorization": f"Bearer {secret}"}


def _set_tenant(client: TestClient, tenant: str, **limits: Any) -> None:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        row = tenants.get_or_create_tenant(session, tenant)
        for name, value in limits.items():
            setattr(row, name, value)
        session.commit()


@pytest.fixture
def keyed(make_client: Any) -> TestClient:
    """An app that trusts a checked key for 0 s, so revocation shows at once."""
    client: TestClient = make_client(auth_cache_s=0.0)
    return client


def test_local_mode_needs_no_key(client: TestClient, wine: BundledTeacher) -> None:
    assert upload_teacher(client, wine.path, [13]).status_code == 201
    assert client.get("/v1/teachers").json()["data"][0]["num_classes"] == 3


def test_missing_wrong_and_revoked_keys_are_401(keyed: TestClient) -> None:
    good = _key(keyed, "acme")
    for headers in ({}, {"Authorization": "Bearer cake_wrong"}, {"Authorization": "Basic eDp5"}):
        response = keyed.get("/v1/jobs", headers=headers)
        body = assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        assert "API key" in body["detail"]
    assert keyed.get("/v1/jobs", headers=good).status_code == 200
    assert keyed.get("/v1/architectures", headers={}).status_code == 401

    ctx = keyed.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        [row] = tenants.list_keys(session, "acme")
        assert row.key_hash == hashlib.sha256(good["Authorization"][7:].encode()).hexdigest()
        assert row.last_used_at is not None
        tenants.revoke_key(session, row.prefix)
    assert_problem(keyed.get("/v1/jobs", headers=good), 401, "unauthorized")
    # revoking every key locks the service; it does not fall back to open local mode
    assert_problem(keyed.get("/v1/jobs"), 401, "unauthorized")


def test_operations_stay_open_with_keys(keyed: TestClient) -> None:
    _key(keyed, "acme")
    assert keyed.get("/healthz").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


def test_another_tenants_objects_are_404_on_every_route(
    keyed: TestClient, wine: BundledTeacher
) -> None:
    alice, bob = _key(keyed, "alice"), _key(keyed, "bob")
    teacher = upload_teacher(keyed, wine.path, [13], headers=alice).json()
    with open(wine.eval_path, "rb") as fh:
        dataset = keyed.post("/v1/datasets", files={"file": ("wine.npz", fh)}, headers=alice).json()
    job = keyed.post("/v1/jobs", json={"teacher_id": teacher["id"]}, headers=alice).json()
    assert "id" in job, job
    ctx = keyed.app.state.ctx  # type: ignore[attr-defined]
    ctx.store.put_bytes(f"jobs/{job['id']}/artifacts/student.pt", b"student")
    with ctx.sessionmaker() as session:
        row = session.get(Job, job["id"])
        row.status, row.finished_at = "succeeded", utcnow()
        session.add(
            Artifact(
                job_id=job["id"],
                name="student.pt",
                size_bytes=7,
                sha256=hashlib.sha256(b"student").hexdigest(),
                content_type="application/octet-stream",
                storage_key=f"jobs/{job['id']}/artifacts/student.pt",
            )
        )
        session.commit()

    ids_by_prefix = {"/v1/teachers": teacher["id"], "/v1/jobs": job["id"]}
    ids_by_prefix["/v1/datasets"] = dataset["id"]
    tried = 0
    for path, operations in keyed.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        if "{" not in path:
            continue
        object_id = next(v for k, v in ids_by_prefix.items() if path.startswith(k))
        url = _fill(path, {"id": object_id, "name": "student.pt"})
        for method in operations:
            if method == "get":  # alice sees her object (deletes are left for the end)
                own = keyed.request(method, url, headers=alice)
                assert own.status_code == 200, (url, own.text)
            response = keyed.request(method, url, headers=bob)
            assert_problem(response, 404, "not_found")
            tried += 1
    assert tried >= 9
    # the SSE stream and the lists do not show it either
    stream = keyed.get(
        f"/v1/jobs/{job['id']}/events", headers={**bob, "Accept": "text/event-stream"}
    )
    assert stream.status_code == 404
    for listing in ("/v1/teachers", "/v1/jobs", "/v1/datasets"):
        assert keyed.get(listing, headers=bob).json()["data"] == []
        assert len(keyed.get(listing, headers=alice).json()["data"]) == 1
    # a job for another tenant's teacher cannot be created
    response = keyed.post("/v1/jobs", json={"teacher_id": teacher["id"]}, headers=bob)
    assert_problem(response, 404, "not_found")
    # and nothing of alice's was changed by bob's attempts
    assert keyed.get(f"/v1/jobs/{job['id']}", headers=alice).json()["status"] == "succeeded"
    assert keyed.get(f"/v1/teachers/{teacher['id']}", headers=alice).status_code == 200


def test_request_rate_limit_per_key_with_retry_after(keyed: TestClient) -> None:
    _set_tenant(keyed, "slow", requests_per_minute=3)
    slow, other = _key(keyed, "slow"), _key(keyed, "other")
    assert [keyed.get("/v1/jobs", headers=slow).status_code for _ in range(3)] == [200] * 3
    response = keyed.get("/v1/jobs", headers=slow)
    body = assert_problem(response, 429, "rate_limited")
    assert int(response.headers["retry-after"]) >= 1
    assert "per minute" in body["detail"]
    assert keyed.get("/v1/jobs", headers=other).status_code == 200  # per key, not global


def test_queued_jobs_limit_is_429_and_keeps_accepted_jobs(
    keyed: TestClient, wine: BundledTeacher
) -> None:
    _set_tenant(keyed, "acme", max_queued_jobs=2)
    acme = _key(keyed, "acme")
    teacher = upload_teacher(keyed, wine.path, [13], headers=acme).json()
    body = {"teacher_id": teacher["id"]}
    accepted = [keyed.post("/v1/jobs", json=body, headers=acme) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    response = keyed.post("/v1/jobs", json=body, headers=acme)
    problem = assert_problem(response, 429, "rate_limited")
    assert response.headers["retry-after"] == "30"
    assert "2 jobs are queued" in problem["detail"]
    listed = keyed.get("/v1/jobs", headers=acme).json()["data"]
    assert sorted(j["id"] for j in listed) == sorted(r.json()["id"] for r in accepted)
    # a replay of an accepted create is not a new job, so it is not refused
    replay = {**acme, "Idempotency-Key": "k1"}
    _set_tenant(keyed, "acme", max_queued_jobs=3)
    first = keyed.post("/v1/jobs", json=body, headers=replay)
    again = keyed.post("/v1/jobs", json=body, headers=replay)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]


def test_storage_quota_is_409_with_usage(keyed: TestClient, wine: BundledTeacher) -> None:
    size = wine.path.stat().st_size
    _set_tenant(keyed, "acme", max_stored_bytes=size + size // 2)
    acme = _key(keyed, "acme")
    assert upload_teacher(keyed, wine.path, [13], headers=acme).status_code == 201
    response = upload_teacher(keyed, wine.path, [13], headers=acme)
    body = assert_problem(response, 409, "conflict")
    assert "storage quota exceeded" in body["detail"]
    assert len(keyed.get("/v1/teachers", headers=acme).json()["data"]) == 1
    # deleting frees the quota
    teacher_id = keyed.get("/v1/teachers", headers=acme).json()["data"][0]["id"]
    assert keyed.delete(f"/v1/teachers/{teacher_id}", headers=acme).status_code == 204
    assert upload_teacher(keyed, wine.path, [13], headers=acme).status_code == 201


def test_openapi_declares_bearer_auth(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert json.dumps(spec["paths"]["/v1/jobs"]["get"]).count("HTTPBearer") == 1
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_tenant_limits_default_from_settings(keyed: TestClient) -> None:
    from cake_shared.limits import limits_for

    ctx = keyed.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessionmaker() as session:
        assert limits_for(session, ctx.settings, "nobody").max_running_jobs == 2
        session.add(Tenant(name="t", webhook_secret="s", max_running_jobs=0))
        session.commit()
        assert limits_for(session, ctx.settings, "t").max_running_jobs == 0


def test_simultaneous_requests_with_an_unchecked_key_share_one_lookup(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of pollers whose key is not (or no longer) in the cache: the first request looks
    the key up, the others wait for that answer instead of each querying the database. The
    lookup is held until every request of the burst has asked for the key."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    burst = 12
    with make_client(auth_cache_s=30.0) as client:
        headers = _key(client, "acme")
        auth = client.app.state.ctx.auth  # type: ignore[attr-defined]
        asked, looked_up, everyone_asked = [0], [0], threading.Event()
        cached, resolve = auth.cached, auth.resolve

        def counting_cached(secret: str | None) -> Any:
            asked[0] += 1  # on the event loop: no two at once
            if asked[0] >= burst:
                everyone_asked.set()
            return cached(secret)

        def held_resolve(secret: str | None) -> Any:
            looked_up[0] += 1
            assert everyone_asked.wait(10), "the burst never reached the key check"
            return resolve(secret)

        monkeypatch.setattr(auth, "cached", counting_cached)
        monkeypatch.setattr(auth, "resolve", held_resolve)

        def get(headers: dict[str, str]) -> Any:
            return client.get("/v1/jobs", headers=headers)

        with ThreadPoolExecutor(burst) as pool:
            answers = list(pool.map(get, [headers] * burst))
        assert [a.status_code for a in answers] == [200] * burst
        assert looked_up[0] == 1
        # A wrong key is refused to every request of its burst from one lookup as well.
        asked[0], looked_up[0] = 0, 0
        everyone_asked.clear()
        wrong = {"Authorization": "Bearer cake_wrong"}
        with ThreadPoolExecutor(burst) as pool:
            answers = list(pool.map(get, [wrong] * burst))
        assert [a.status_code for a in answers] == [401] * burst
        assert looked_up[0] == 1
