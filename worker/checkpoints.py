"""Pipeline checkpoints kept in the object store, so any worker can resume a job.

Each attempt writes its checkpoints under its own folder, ``jobs/<id>/attempts/<n>/checkpoints/``
(:mod:`cake_shared.job_keys`). A worker that dies mid-job leaves its last finished synthesis
chunk and training epoch there; whichever worker claims the job next (maybe on another machine,
with S3) reads, for each checkpoint, the copy of the latest attempt that wrote one, and carries
on instead of starting over. A stale attempt (frozen past its heartbeat timeout, then thawed)
can only write into its own folder, never over the checkpoints of the attempt that replaced it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cake_core.errors import JobCanceled
from cake_shared.job_keys import checkpoint_prefix, job_prefix, parse_job_key
from cake_shared.storage import ObjectNotFound, ObjectStore

__all__ = ["ObjectStoreCheckpoints", "checkpoint_prefix"]


class ObjectStoreCheckpoints:
    """A :class:`cake_core.pipeline.CheckpointStore` on an :class:`ObjectStore`.

    ``save`` writes to a local temp file and uploads it whole (the store's writes are atomic,
    so a reader never sees half a checkpoint); ``load`` reads with ``weights_only=True``: a
    checkpoint holds tensors and plain containers, never pickled code.

    ``guard`` (the worker's "do I still hold the job's claim?") is asked before each save; when
    it says no, nothing is written and :class:`~cake_core.errors.JobCanceled` stops the
    pipeline: a thawed stale worker stops at its next step instead of computing on.

    ``attempt`` is the job's attempt number for this claim: saves go to that attempt's folder;
    ``keys`` and ``load`` see the checkpoints of this and every earlier attempt (and of the
    layout from before per-attempt folders, as attempt 0), each key from the latest attempt
    that wrote it. The job's checkpoints are listed once, at the first ``keys`` or ``load``:
    while this attempt holds the claim no other attempt writes anything it should read.
    """

    def __init__(
        self,
        store: ObjectStore,
        job_id: str,
        *,
        attempt: int,
        scratch: str | Path | None = None,
        guard: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.prefix = checkpoint_prefix(job_id, attempt)
        self.scratch = Path(scratch) if scratch is not None else None
        self.guard = guard
        self.saved: list[str] = []
        self.loaded: list[str] = []
        #: checkpoint key -> (attempt, object key) of the latest copy; None until first listed
        self._found: dict[str, tuple[int, str]] | None = None

    def object_key(self, key: str) -> str:
        """Where this attempt saves ``key``."""
        return f"{self.prefix}{self._normalise(key)}.pt"

    @staticmethod
    def _normalise(key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid checkpoint key {key!r}")
        return "/".join(parts)

    def _tempfile(self) -> str:
        fd, path = tempfile.mkstemp(suffix=".pt", dir=self.scratch)
        os.close(fd)
        return path

    def _job_checkpoints(self, store: ObjectStore) -> list[tuple[int, str, str]]:
        """(attempt, checkpoint key, object key) of every checkpoint of the job, any attempt."""
        found = []
        for object_key in store.list(job_prefix(self.job_id)):
            parsed = parse_job_key(object_key)
            if parsed is None or parsed.area != "checkpoints" or not parsed.name.endswith(".pt"):
                continue
            found.append((parsed.attempt, parsed.name[: -len(".pt")], object_key))
        return found

    def _latest(self) -> dict[str, tuple[int, str]]:
        if self._found is None:
            found: dict[str, tuple[int, str]] = {}
            for attempt, key, object_key in self._job_checkpoints(self.store):
                # Later attempts are unlikely but not ours to read: a claim holder only ever
                # follows the attempts before it.
                if attempt <= self.attempt and attempt >= found.get(key, (-1, ""))[0]:
                    found[key] = (attempt, object_key)
            self._found = found
        return self._found

    def save(self, key: str, state: dict[str, Any]) -> None:
        if self.guard is not None and not self.guard():
            raise JobCanceled("the job's claim was lost; checkpoint not written")
        object_key = self.object_key(key)
        path = self._tempfile()
        try:
            torch.save(state, path)
            self.store.put_file(object_key, path)
        finally:
            os.unlink(path)
        if self._found is not None:
            self._found[self._normalise(key)] = (self.attempt, object_key)
        self.saved.append(key)

    def load(self, key: str) -> dict[str, Any] | None:
        latest = self._latest().get(self._normalise(key))
        if latest is None:
            return None
        path = self._tempfile()
        try:
            try:
                self.store.get_file(latest[1], path)
            except ObjectNotFound:
                return None
            state = torch.load(path, map_location="cpu", weights_only=True)
        finally:
            os.unlink(path)
        self.loaded.append(key)
        return state

    def keys(self) -> list[str]:
        """Checkpoint keys this attempt can resume from (``synthesis/000000``, ``training``...),
        saved by it or an earlier attempt."""
        return sorted(self._latest())

    def clear(self, attempts: int | None = None) -> None:
        """Delete every checkpoint of the job, of every attempt (after it ended for good),
        each store call tried at most ``attempts`` times (default: the store's budget)."""
        store = self.store if attempts is None else self.store.with_attempts(attempts)
        for _, _, object_key in self._job_checkpoints(store):
            store.delete(object_key)
        self._found = {}
