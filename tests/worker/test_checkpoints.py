"""Checkpoints under per-attempt keys (``worker.checkpoints``): each attempt writes only into
its own folder, and a later attempt resumes from the latest copy of each checkpoint that an
earlier attempt (or the layout from before per-attempt folders) left."""

from __future__ import annotations

import torch

from cake_shared.storage import LocalStore
from worker.checkpoints import ObjectStoreCheckpoints


def test_a_later_attempt_resumes_from_the_latest_copy_of_each_checkpoint(tmp_path) -> None:
    store = LocalStore(tmp_path)
    # Written before per-attempt folders (a job running across the upgrade): attempt 0.
    torch.save({"chunk": 0, "by": 0}, tmp_path / "legacy.pt")
    store.put_file("jobs/job_x/checkpoints/synthesis/000000.pt", tmp_path / "legacy.pt")

    first = ObjectStoreCheckpoints(store, "job_x", attempt=1)
    assert first.keys() == ["synthesis/000000"]
    first.save("synthesis/000001", {"chunk": 1, "by": 1})
    first.save("training", {"epoch": 1, "by": 1})
    second = ObjectStoreCheckpoints(store, "job_x", attempt=2)
    second.save("training", {"epoch": 2, "by": 2})
    # A stale attempt writes into its own folder only: never over the one that replaced it.
    assert store.list("jobs/job_x/attempts/") == [
        "jobs/job_x/attempts/1/checkpoints/synthesis/000001.pt",
        "jobs/job_x/attempts/1/checkpoints/training.pt",
        "jobs/job_x/attempts/2/checkpoints/training.pt",
    ]

    third = ObjectStoreCheckpoints(store, "job_x", attempt=3)
    assert third.keys() == ["synthesis/000000", "synthesis/000001", "training"]
    assert third.load("synthesis/000000") == {"chunk": 0, "by": 0}
    assert third.load("synthesis/000001") == {"chunk": 1, "by": 1}
    assert third.load("training") == {"epoch": 2, "by": 2}
    assert third.load("synthesis/000002") is None
    # Its own saves are what it reads back from then on.
    third.save("training", {"epoch": 3, "by": 3})
    assert third.load("training") == {"epoch": 3, "by": 3}
    # An earlier attempt never reads a later one's checkpoints.
    assert ObjectStoreCheckpoints(store, "job_x", attempt=2).load("training") == {
        "epoch": 2,
        "by": 2,
    }

    # Once the job has ended, every attempt's checkpoints go, and nothing else of the job.
    store.put_bytes("jobs/job_x/attempts/3/artifacts/student.pt", b"student")
    third.clear()
    assert third.keys() == []
    assert store.list("jobs/") == ["jobs/job_x/attempts/3/artifacts/student.pt"]
