"""Where a job's objects live in the store: one folder per attempt.

Every attempt writes only under its own ``jobs/<id>/attempts/<n>/`` (``checkpoints/...`` and
``artifacts/...``), and the attempt that wins records its artifact rows (whose
``storage_key`` names its folder) and ``jobs.artifacts_attempt`` in the same transaction that
ends the job. A worker that lost its claim but was frozen in the instant between its last claim
check and its upload (or whose check met a database outage, which counts as "still ours") can
therefore only write into its own attempt's folder, which no row points at: it cannot change
the bytes a download serves. Only the claim holder writes into a folder: ``n`` is the job's
``attempts`` after the claim, and the only thing that ever gives a number back, a clean
hand-back at shutdown (``refund_attempt``), is made by the holder itself after it stopped
writing.

Objects from before per-attempt folders (``jobs/<id>/artifacts/<name>``,
``jobs/<id>/checkpoints/...``) are read where rows name them: artifact rows keep their stored
key, and legacy checkpoints count as attempt 0 when a later attempt resumes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "JOB_PREFIX",
    "JobKey",
    "artifact_key",
    "attempt_prefix",
    "checkpoint_prefix",
    "job_prefix",
    "parse_job_key",
]

#: Where every job's objects live: ``jobs/<id>/...``.
JOB_PREFIX = "jobs/"


def job_prefix(job_id: str) -> str:
    """Every object of the job, of every attempt and of the legacy layout."""
    return f"{JOB_PREFIX}{job_id}/"


def attempt_prefix(job_id: str, attempt: int) -> str:
    """The folder of one attempt (attempt numbers start at 1)."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    return f"{job_prefix(job_id)}attempts/{attempt}/"


def checkpoint_prefix(job_id: str, attempt: int) -> str:
    """Where ``attempt`` writes its checkpoints."""
    return f"{attempt_prefix(job_id, attempt)}checkpoints/"


def artifact_key(job_id: str, attempt: int, name: str) -> str:
    """Where ``attempt`` uploads artifact ``name``."""
    return f"{attempt_prefix(job_id, attempt)}artifacts/{name}"


@dataclass(frozen=True)
class JobKey:
    """A job object's key, read back: the job, the attempt that wrote it (0: the legacy
    layout, written before per-attempt folders), its area (``checkpoints`` or ``artifacts``)
    and the rest of the path within that area."""

    job_id: str
    attempt: int
    area: str
    name: str


def parse_job_key(key: str) -> JobKey | None:
    """Read ``key`` as a job object's key; None for anything else under ``jobs/``."""
    parts = key.split("/")
    if len(parts) < 4 or parts[0] + "/" != JOB_PREFIX or not parts[1]:
        return None
    job_id, rest = parts[1], parts[2:]
    attempt = 0
    if rest[0] == "attempts":
        if len(rest) < 4 or not rest[1].isdigit() or int(rest[1]) < 1:
            return None
        attempt, rest = int(rest[1]), rest[2:]
    if rest[0] not in ("checkpoints", "artifacts") or not all(rest[1:]):
        return None
    return JobKey(job_id, attempt, rest[0], "/".join(rest[1:]))
