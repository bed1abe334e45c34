"""A job's files: loading its inputs from the database and the object store into the work folder,
and uploading the artifacts the pipeline wrote (with their size, SHA-256 and content type).

Split from :mod:`worker.runner` (which decides how a job ends) so that what travels between the
object store and a job's work folder, and which missing object is the user's to fix, is read in
one place.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cake_core.errors import DatasetInvalidError, TeacherInvalidError
from cake_shared.job_keys import artifact_key
from cake_shared.models import Dataset, Job, Teacher
from cake_shared.services import Services
from cake_shared.storage import ObjectNotFound, ObjectStore
from worker.checkpoints import ObjectStoreCheckpoints

log = logging.getLogger("cake.worker")

ARTIFACT_CONTENT_TYPES = {
    "student.pt": "application/octet-stream",
    "student.onnx": "application/octet-stream",
    "student.int8.onnx": "application/octet-stream",
    "manifest.json": "application/json",
    "samples.png": "image/png",
    "curves.png": "image/png",
    "report.md": "text/markdown; charset=utf-8",
}
#: Fields the API may keep beside the engine's spec; the engine refuses unknown fields.
_NON_ENGINE_FIELDS = ("teacher_id", "eval_dataset_id", "metadata", "mlflow_tracking_uri")


@dataclass
class JobInputs:
    """What a claimed job needs from the database to run."""

    attempt: int
    queue: str
    spec: dict[str, Any]
    input_shape: tuple[int, ...]
    teacher_key: str | None
    dataset_key: str | None
    has_dataset: bool
    cancel_requested: bool


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inputs(services: Services, job_id: str) -> JobInputs | None:
    """The job's spec and input keys (None: the job no longer exists)."""
    with services.session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        teacher = session.get(Teacher, job.teacher_id)
        dataset = session.get(Dataset, job.eval_dataset_id) if job.eval_dataset_id else None
        spec = {k: v for k, v in dict(job.spec or {}).items() if k not in _NON_ENGINE_FIELDS}
        return JobInputs(
            attempt=job.attempts,
            queue=job.queue,
            spec=spec,
            input_shape=tuple(int(d) for d in teacher.input_shape) if teacher else (),
            teacher_key=teacher.storage_key if teacher else None,
            dataset_key=dataset.storage_key if dataset else None,
            has_dataset=job.eval_dataset_id is not None,
            cancel_requested=job.cancel_requested,
        )


def _get_or_raise(store: ObjectStore, key: str, path: Path, missing: Exception) -> None:
    """Download ``key`` to ``path``; an object gone from the store is the user's to fix."""
    try:
        store.get_file(key, path)
    except ObjectNotFound:
        raise missing from None


def fetch_inputs(store: ObjectStore, inputs: JobInputs, work: Path) -> tuple[Path, Path | None]:
    """Download the teacher (and evaluation set); missing objects are the user's to fix."""
    if inputs.teacher_key is None:
        raise TeacherInvalidError("the job's teacher no longer exists; upload it again")
    teacher_path = work / "teacher.pt"
    _get_or_raise(
        store,
        inputs.teacher_key,
        teacher_path,
        TeacherInvalidError(
            "the teacher's file is missing from the object store; upload the teacher again"
        ),
    )
    eval_path = None
    if inputs.has_dataset:
        if inputs.dataset_key is None:
            raise DatasetInvalidError("the job's evaluation data set no longer exists")
        eval_path = work / "eval.npz"
        _get_or_raise(
            store,
            inputs.dataset_key,
            eval_path,
            DatasetInvalidError(
                "the evaluation data set's file is missing from the object store; upload it again"
            ),
        )
    return teacher_path, eval_path


def upload_artifacts(
    store: ObjectStore, job_id: str, attempt: int, artifacts: dict[str, Path]
) -> list[dict[str, Any]]:
    """Put each artifact under the attempt's ``jobs/<id>/attempts/<n>/artifacts/`` and return
    the rows that :func:`cake_shared.jobs.finish_job` records.

    The attempt's own folder, not one shared by the job: a worker that lost its claim after
    its last check still uploads, but only where no row points (:mod:`cake_shared.job_keys`).
    """
    rows = []
    for name, path in artifacts.items():
        key = artifact_key(job_id, attempt, name)
        store.put_file(key, path)
        rows.append(
            {
                "name": name,
                "size_bytes": path.stat().st_size,
                "sha256": _sha256(path),
                "content_type": ARTIFACT_CONTENT_TYPES.get(name, "application/octet-stream"),
                "storage_key": key,
            }
        )
    return rows


def discard_artifacts(store: ObjectStore, rows: list[dict[str, Any]]) -> None:
    """Delete artifacts this attempt uploaded but could not record (it lost the job); one try
    per object, a failure only logged: no row points at them, and the sweeper deletes what is
    left in a losing attempt's folder once the job has ended."""
    once = store.with_attempts(1)
    for row in rows:
        try:
            once.delete(row["storage_key"])
        except Exception as exc:
            log.warning("could not delete %s (the sweeper will): %s", row["storage_key"], exc)


def clear_checkpoints(checkpoints: ObjectStoreCheckpoints | None) -> None:
    """Delete the job's checkpoints once it has ended; a failure is only logged.

    One try per store call, not the worker's minute of retries: the job is over, the next
    job should not wait behind an outage of the store, and the sweeper
    (:mod:`cake_shared.store_sweep`) deletes the checkpoints of ended jobs that are left.
    """
    if checkpoints is None:
        return
    try:
        checkpoints.clear(attempts=1)
    except Exception as exc:  # a leftover checkpoint wastes space until the next sweep
        log.warning("could not delete the checkpoints of job %s (the sweeper will): %s",
                    checkpoints.job_id, exc)  # fmt: skip
