"""The sweeper's store round (``cake_shared.store_sweep``): objects nothing will read again go,
everything a row still refers to stays, on the local-disk store and on S3 (moto's server).

Rows are written as the API and the worker write them; the store objects are real files or
real S3 objects. Rounds are called directly (each is synchronous) except in the test of the
sweeper thread, which waits for the condition, never a fixed time.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from store_endpoint_support import ClosingEndpoint
from worker_support import S3_BUCKET, Service, wait_for

from cake_shared.ids import new_id
from cake_shared.models import Artifact, Dataset, Job, Teacher, utcnow
from cake_shared.storage import LocalStore, Retry, S3Store
from cake_shared.store_sweep import StoreSweeper
from worker.checkpoints import ObjectStoreCheckpoints
from worker.job_files import clear_checkpoints
from worker.sweeper import Sweeper

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


@pytest.fixture(params=["local", "s3"])
def store_service(request: pytest.FixtureRequest, make_service: Callable[..., Service]) -> Service:
    """The same test on the local-disk store and on an S3 server (under a prefix of its own:
    moto's servers in one process share their buckets)."""
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        url = f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
        return make_service(CAKE_STORE_URL=url, CAKE_S3_ENDPOINT_URL=endpoint)
    return make_service()


def _upload(service: Service, kind: str, content: bytes) -> str:
    """Store ``content`` by content, as the API does; its key."""
    key = f"{kind}/{hashlib.sha256(content).hexdigest()}"
    service.store.put_bytes(key, content)
    return key


def _teacher(service: Service, key: str, *, deleted: bool = False) -> str:
    teacher_id = new_id("teacher")
    with service.ctx.session_scope() as session:
        session.add(
            Teacher(
                id=teacher_id,
                sha256=key.split("/")[1],
                size_bytes=1,
                input_shape=[13],
                num_classes=3,
                parameters=1,
                storage_key=key,
                deleted_at=utcnow() if deleted else None,
            )
        )
    return teacher_id


def _dataset(service: Service, key: str) -> None:
    with service.ctx.session_scope() as session:
        session.add(
            Dataset(
                id=new_id("dataset"),
                sha256=key.split("/")[1],
                size_bytes=1,
                num_examples=1,
                input_shape=[13],
                num_classes=3,
                storage_key=key,
            )
        )


def _job(
    service: Service, teacher_id: str, status: str, artifacts_attempt: int | None = None
) -> str:
    job_id = new_id("job")
    with service.ctx.session_scope() as session:
        session.add(
            Job(
                id=job_id,
                teacher_id=teacher_id,
                spec={},
                status=status,
                phase=status,
                artifacts_attempt=artifacts_attempt,
            )
        )
    return job_id


def _artifact_row(service: Service, job_id: str, key: str) -> None:
    """The row ``finish_job`` writes for an artifact stored under ``key``."""
    with service.ctx.session_scope() as session:
        session.add(
            Artifact(
                job_id=job_id,
                name=key.rpartition("/")[2],
                size_bytes=1,
                sha256="0" * 64,
                content_type="application/octet-stream",
                storage_key=key,
            )
        )


def _checkpoints(service: Service, job_id: str) -> list[str]:
    """Checkpoints of ``job_id`` as workers leave them: a synthesis chunk in the folder from
    before per-attempt keys, a training checkpoint of attempt 1 and another of attempt 2."""
    keys = [
        f"jobs/{job_id}/checkpoints/synthesis/000000.pt",
        f"jobs/{job_id}/attempts/1/checkpoints/training.pt",
        f"jobs/{job_id}/attempts/2/checkpoints/training.pt",
    ]
    for key in keys:
        service.store.put_bytes(key, b"checkpoint")
    return keys


def test_checkpoints_of_ended_jobs_and_files_of_deleted_jobs_are_swept(
    store_service: Service,
) -> None:
    service = store_service
    teacher = _teacher(service, _upload(service, "teachers", b"teacher"))
    job_ids = {status: _job(service, teacher, status) for status in STATUSES}
    checkpoints = {status: _checkpoints(service, job_id) for status, job_id in job_ids.items()}
    student = f"jobs/{job_ids['succeeded']}/artifacts/student.pt"  # a row from before 0006
    service.store.put_bytes(student, b"student")
    _artifact_row(service, job_ids["succeeded"], student)
    # DELETE /v1/jobs/{id} removed the row, then the store was down: its files were left.
    gone = new_id("job")
    gone_files = [*_checkpoints(service, gone), f"jobs/{gone}/artifacts/student.pt"]
    service.store.put_bytes(gone_files[-1], b"student")

    result = StoreSweeper(service.ctx).sweep()

    ended = [key for status in ("succeeded", "failed", "canceled") for key in checkpoints[status]]
    assert sorted(result.checkpoints) == sorted(ended)
    assert sorted(result.job_files) == sorted(gone_files)
    assert result.uploads == []
    # What a live job resumes from, and a retained job's artifacts, are all still there.
    assert service.store.list("jobs/") == sorted(
        [*checkpoints["queued"], *checkpoints["running"], student]
    )
    assert StoreSweeper(service.ctx).sweep().removed == 0


def test_artifacts_of_attempts_that_lost_an_ended_job_are_swept(store_service: Service) -> None:
    """Per-attempt keys: a worker that lost its claim after its last check uploads into its
    own attempt's folder. Once the job has ended, those objects go; the winner's (named by
    ``artifacts_attempt`` and its rows), a row's legacy key, and anything of a job still
    running stay."""
    service = store_service
    teacher = _teacher(service, _upload(service, "teachers", b"teacher"))

    def put(job_id: str, attempt: int, name: str = "student.pt") -> str:
        key = f"jobs/{job_id}/attempts/{attempt}/artifacts/{name}"
        service.store.put_bytes(key, f"attempt {attempt}".encode())
        return key

    won = _job(service, teacher, "succeeded", artifacts_attempt=2)
    winner = [put(won, 2), put(won, 2, "manifest.json")]
    for key in winner:
        _artifact_row(service, won, key)
    losers = [put(won, 1), put(won, 1, "manifest.json"), put(won, 3)]
    failed = _job(service, teacher, "failed")
    losers.append(put(failed, 1))
    # Live: the stale attempt's upload may still be followed by the winner's; not decided yet.
    running = _job(service, teacher, "running")
    undecided = [put(running, 1)]
    # artifacts_attempt lost (a downgrade and upgrade again): the rows still name the keys.
    relabelled = _job(service, teacher, "succeeded")
    named = put(relabelled, 4)
    _artifact_row(service, relabelled, named)

    result = StoreSweeper(service.ctx).sweep()

    assert sorted(result.lost_artifacts) == sorted(losers)
    assert result.checkpoints == [] and result.job_files == []
    assert all(service.store.exists(key) for key in [*winner, *undecided, named])
    assert not any(service.store.exists(key) for key in losers)
    assert service.store.get_bytes(winner[0]) == b"attempt 2"
    assert StoreSweeper(service.ctx).sweep().removed == 0


def test_unreferenced_uploads_are_swept_once_past_the_grace_period(
    store_service: Service,
) -> None:
    service = store_service
    live = _upload(service, "teachers", b"live teacher")
    _teacher(service, live)
    # A deleted teacher that a finished job still names keeps its object...
    named = _upload(service, "teachers", b"teacher of a finished job")
    _job(service, _teacher(service, named, deleted=True), "succeeded")
    # ...one no job names does not (the API's delete of the file failed).
    unnamed = _upload(service, "teachers", b"deleted teacher")
    _teacher(service, unnamed, deleted=True)
    shared = _upload(service, "teachers", b"shared by two tenants' rows")
    _teacher(service, shared, deleted=True)
    _teacher(service, shared)  # the same content uploaded again: one object, still needed
    dataset = _upload(service, "datasets", b"evaluation set")
    _dataset(service, dataset)
    # Stored, then the row was never committed (a crash, the database away).
    orphans = [_upload(service, "teachers", b"orphan teacher"), _upload(service, "datasets", b"x")]

    # Within the grace period (the default hour) nothing goes: a row may be on its way.
    assert StoreSweeper(service.ctx).sweep().uploads == []
    kept = [live, named, shared, dataset]
    assert all(service.store.exists(key) for key in [*kept, unnamed, *orphans])

    result = StoreSweeper(service.ctx, grace_s=0).sweep()
    assert sorted(result.uploads) == sorted([unnamed, *orphans])
    assert all(service.store.exists(key) for key in kept)
    assert not any(service.store.exists(key) for key in [unnamed, *orphans])


def test_a_fresh_upload_stays_while_an_old_one_goes_in_the_same_round(service: Service) -> None:
    """On the local store the files' times can be set: one orphan written two hours ago, one
    just now, and the default grace of an hour between them."""
    _teacher(service, _upload(service, "teachers", b"live"))
    old, fresh = _upload(service, "teachers", b"old orphan"), _upload(service, "teachers", b"new")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(service.data_dir / "store" / old, (two_hours_ago, two_hours_ago))

    result = StoreSweeper(service.ctx).sweep()
    assert result.uploads == [old]
    assert service.store.exists(fresh) and not service.store.exists(old)


def test_each_round_looks_at_one_page_and_the_walk_goes_on(store_service: Service) -> None:
    service = store_service
    _teacher(service, _upload(service, "teachers", b"teacher"))
    gone = [f"jobs/{new_id('job')}/artifacts/student.pt" for _ in range(5)]
    for key in gone:
        service.store.put_bytes(key, b"student")
    sweeper = StoreSweeper(service.ctx, page=2)

    rounds = [sweeper.sweep() for _ in range(3)]
    assert [len(r.job_files) for r in rounds] == [2, 2, 1]
    assert [r.examined for r in rounds] == [3, 3, 2]  # 2 + 2 + 1 job objects, 1 teacher each
    assert service.store.list("jobs/") == []
    assert sweeper.cursors["jobs/"] == ""  # the walk reached the end and starts over


def test_list_page_walks_the_store_in_key_order(store_service: Service) -> None:
    store = store_service.store
    keys = [f"jobs/job_{i}/checkpoints/training.pt" for i in range(5)]
    for key in reversed(keys):
        store.put_bytes(key, b"x" * 3)
    store.put_bytes("teachers/abc", b"not under jobs/")
    before = utcnow()
    first = store.list_page("jobs/", limit=3)
    assert [info.key for info in first] == keys[:3]
    assert all(info.size == 3 for info in first)
    assert all(before - timedelta(minutes=5) < info.modified <= before for info in first)
    rest = store.list_page("jobs/", start_after=first[-1].key, limit=3)
    assert [info.key for info in rest] == keys[3:]
    assert store.list_page("datasets/") == []


def test_nothing_is_deleted_when_the_database_is_empty(service: Service) -> None:
    """A database with no rows at all beside a full store is likelier a wrong database URL
    than a service whose every row was deleted."""
    leftovers = [f"jobs/{new_id('job')}/artifacts/student.pt", "teachers/" + "0" * 64]
    for key in leftovers:
        service.store.put_bytes(key, b"data")
    result = StoreSweeper(service.ctx, grace_s=0).sweep()
    assert result.removed == 0
    assert all(service.store.exists(key) for key in leftovers)


def test_the_workers_sweeper_thread_removes_leftover_checkpoints(service: Service) -> None:
    teacher = _teacher(service, _upload(service, "teachers", b"teacher"))
    failed = _checkpoints(service, _job(service, teacher, "failed"))
    running = _checkpoints(service, _job(service, teacher, "running"))
    sweeper = Sweeper(service.ctx, interval_s=0.05)
    sweeper.start()
    try:
        wait_for(
            lambda: not any(service.store.exists(k) for k in failed), 30, "the sweep of the failed"
        )
    finally:
        sweeper.stop()
    assert all(service.store.exists(key) for key in running)


def test_a_worker_deletes_an_ended_jobs_checkpoints_with_one_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's store keeps its long budget; deleting checkpoints after a job ended does
    not wait through it (the sweeper deletes what is left), so the next job does not wait."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "test")
    with ClosingEndpoint() as endpoint:
        long = Retry(attempts=7, backoff_s=1.0, backoff_max_s=20.0)
        store = S3Store("bucket", endpoint_url=endpoint.url, region="us-east-1", retry=long)
        started = time.monotonic()
        clear_checkpoints(ObjectStoreCheckpoints(store, "job_x", attempt=1))  # logs only
        elapsed = time.monotonic() - started
        assert endpoint.connections == 1
    assert elapsed < 5, elapsed  # the long budget's waits alone are at least 25 s
    assert store.retry == long  # the worker's store itself is unchanged


def test_with_attempts_on_the_local_store_is_the_store(tmp_path) -> None:
    store = LocalStore(tmp_path)
    assert store.with_attempts(1) is store
