"""Pipeline checkpoints kept in the object store, so any worker can resume a job.

A worker that dies mid-job leaves its last finished synthesis chunk and training epoch under
``jobs/<id>/checkpoints/``; whichever worker claims the job next (maybe on another machine, with
S3) loads them and carries on instead of starting over.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cake_core.errors import JobCanceled
from cake_shared.storage import ObjectNotFound, ObjectStore


def checkpoint_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoints/"


class ObjectStoreCheckpoints:
    """A :class:`cake_core.pipeline.CheckpointStore` on an :class:`ObjectStore`.

    ``save`` writes to a local temp file and uploads it whole (the store's writes are atomic,
    so a reader never sees half a checkpoint); ``load`` reads with ``weights_only=True``: a
    checkpoint holds tensors and plain containers, never pickled code.

    ``guard`` (the worker's "do I still hold the job's claim?") is asked before each save; when
    it says no, nothing is written and :class:`~cake_core.errors.JobCanceled` stops the
    pipeline. A worker that was frozen past its heartbeat timeout, then thawed, would otherwise
    overwrite the newer training checkpoint of the attempt that replaced it, or leave files
    behind after that attempt finished and deleted them.
    """

    def __init__(
        self,
        store: ObjectStore,
        job_id: str,
        scratch: str | Path | None = None,
        guard: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.prefix = checkpoint_prefix(job_id)
        self.scratch = Path(scratch) if scratch is not None else None
        self.guard = guard
        self.saved: list[str] = []
        self.loaded: list[str] = []

    def object_key(self, key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"invalid checkpoint key {key!r}")
        return f"{self.prefix}{'/'.join(parts)}.pt"

    def _tempfile(self) -> str:
        fd, path = tempfile.mkstemp(suffix=".pt", dir=self.scratch)
        os.close(fd)
        return path

    def save(self, key: str, state: dict[str, Any]) -> None:
        if self.guard is not None and not self.guard():
            raise JobCanceled("the job's claim was lost; checkpoint not written")
        path = self._tempfile()
        try:
            torch.save(state, path)
            self.store.put_file(self.object_key(key), path)
        finally:
            os.unlink(path)
        self.saved.append(key)

    def load(self, key: str) -> dict[str, Any] | None:
        path = self._tempfile()
        try:
            try:
                self.store.get_file(self.object_key(key), path)
            except ObjectNotFound:
                return None
            state = torch.load(path, map_location="cpu", weights_only=True)
        finally:
            os.unlink(path)
        self.loaded.append(key)
        return state

    def keys(self) -> list[str]:
        """Checkpoint keys present in the store (``synthesis/000000``, ``training``...)."""
        return [
            key[len(self.prefix) : -len(".pt")]
            for key in self.store.list(self.prefix)
            if key.endswith(".pt")
        ]

    def clear(self, attempts: int | None = None) -> None:
        """Delete every checkpoint of the job (after it ended for good), each store call tried
        at most ``attempts`` times (default: the store's budget)."""
        store = self.store if attempts is None else self.store.with_attempts(attempts)
        for key in store.list(self.prefix):
            store.delete(key)
