"""The sweeper's side of the object store: deleting objects nothing will read again.

Objects are left behind when a delete fails: a worker deletes a job's checkpoints with one try
per call once the job has ended (``worker.job_files.clear_checkpoints``), ``DELETE /v1/jobs/{id}``
deletes the job's row first and its files after, and an upload is stored before its row is
committed (a crash or a database error in between leaves the object alone). The workers'
sweeper (``worker.sweeper``) calls :meth:`StoreSweeper.sweep` every round, and it deletes:

- the checkpoints of every attempt of a job that has ended (``jobs/<id>/attempts/<n>/
  checkpoints/...``, and ``jobs/<id>/checkpoints/...`` from before per-attempt folders:
  succeeded, failed, canceled is a final status, so nothing will resume from them);
- the artifacts of an ended job's attempts that did not win (``jobs/<id>/attempts/<n>/
  artifacts/...`` where ``n`` is not ``jobs.artifacts_attempt`` and no artifact row names the
  key): a worker that lost its claim after its last check uploads into its own attempt's
  folder (``cake_shared.job_keys``), and a thawed one may do so even after the job ended;
- every ``jobs/<id>/...`` object of a job whose row no longer exists (its artifacts go with
  its row: ``Artifact`` rows are deleted with the job);
- ``teachers/<sha256>`` and ``datasets/<sha256>`` objects that no row refers to, once they are
  older than ``orphan_upload_grace_s`` (an upload is written a moment before its row). A
  teacher's object is referred to by a live teacher row, or by a deleted teacher row that a
  job (of any status) still names: uploads are stored by content, so several rows, tenants
  and jobs may share one object, and the object goes only when none of them is left.

The work per round is bounded: each round lists at most ``orphan_sweep_page`` objects per
prefix, from where the previous round stopped (a cursor per prefix, starting over at the
end), with one query per few hundred keys. Every store call makes one try (an outage of the
store ends the round; the next one starts from the same place), and the database is read
before each delete, so a failure in either never deletes anything that is still referred to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import exists, or_, select, union

from cake_shared.job_keys import JOB_PREFIX, parse_job_key
from cake_shared.models import Artifact, Dataset, Job, Teacher, utcnow
from cake_shared.status import TERMINAL_STATUSES

if TYPE_CHECKING:
    from cake_shared.services import Services
    from cake_shared.storage import ObjectInfo, ObjectStore

__all__ = ["JOB_PREFIX", "UPLOAD_PREFIXES", "StoreSweepResult", "StoreSweeper"]

log = logging.getLogger("cake.worker.sweeper")

#: Where uploads live, stored by content: ``teachers/<sha256>``, ``datasets/<sha256>``.
UPLOAD_PREFIXES = ("teachers/", "datasets/")
#: Keys per ``IN (...)`` query: under SQLite's oldest limit of 999 bound parameters.
_QUERY_CHUNK = 500


@dataclass
class StoreSweepResult:
    """What one round deleted (object keys) and how many objects it looked at."""

    checkpoints: list[str] = field(default_factory=list)
    job_files: list[str] = field(default_factory=list)
    #: artifacts uploaded by an attempt that did not win its ended job
    lost_artifacts: list[str] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    examined: int = 0

    @property
    def removed(self) -> int:
        return (
            len(self.checkpoints)
            + len(self.job_files)
            + len(self.lost_artifacts)
            + len(self.uploads)
        )


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _QUERY_CHUNK):
        yield items[start : start + _QUERY_CHUNK]


class StoreSweeper:
    """Deletes orphaned objects a page at a time; one instance per sweeper, as it keeps the
    place each prefix's walk has reached between rounds."""

    def __init__(
        self, services: Services, *, page: int | None = None, grace_s: float | None = None
    ) -> None:
        self.services = services
        self.page = page or services.settings.orphan_sweep_page
        self.grace_s = services.settings.orphan_upload_grace_s if grace_s is None else grace_s
        #: The last key each prefix's walk looked at ("" = start from the beginning).
        self.cursors: dict[str, str] = {prefix: "" for prefix in (JOB_PREFIX, *UPLOAD_PREFIXES)}
        self._warned_empty = False

    def sweep(self) -> StoreSweepResult:
        """One round: a page of each prefix; raises when the store or the database fails
        (what was deleted before that stays deleted, the rest waits for the next round)."""
        store = self.services.store.with_attempts(1)
        result = StoreSweepResult()
        pages = {prefix: store.list_page(prefix, cursor, self.page)
                 for prefix, cursor in self.cursors.items()}  # fmt: skip
        if any(pages.values()) and self._database_is_empty():
            # A database without a single job, teacher or data set beside a store that holds
            # objects is likelier a wrong CAKE_DATABASE_URL than a service whose every row was
            # deleted: deleting "orphans" then would delete every upload and artifact.
            if not self._warned_empty:
                log.warning(
                    "the database holds no jobs, teachers or data sets but the object store "
                    "has objects; not deleting orphans (is CAKE_DATABASE_URL right?)"
                )
                self._warned_empty = True
            return result
        for prefix, found in pages.items():
            result.examined += len(found)
            if prefix == JOB_PREFIX:
                self._sweep_job_objects(store, found, result)
            else:
                self._sweep_uploads(store, found, result)
            # Only now, so that a round that failed half-way looks at the same page again.
            self.cursors[prefix] = found[-1].key if len(found) >= self.page else ""
        if result.removed:
            log.info(
                "store sweep: removed %d checkpoint object(s) of ended jobs, %d object(s) of "
                "deleted jobs, %d artifact(s) of attempts that lost their job, %d unreferenced "
                "upload(s) (%d objects looked at)",
                len(result.checkpoints), len(result.job_files), len(result.lost_artifacts),
                len(result.uploads), result.examined,
            )  # fmt: skip
        return result

    # -- jobs/<id>/... ---------------------------------------------------------------------------
    def _sweep_job_objects(
        self, store: ObjectStore, found: list[ObjectInfo], result: StoreSweepResult
    ) -> None:
        by_job: dict[str, list[str]] = {}
        for info in found:
            parts = info.key.split("/")
            if len(parts) >= 3 and parts[1]:  # jobs/<id>/<area>/...; anything else is left
                by_job.setdefault(parts[1], []).append(info.key)
        jobs = self._jobs(list(by_job))
        for job_id, keys in by_job.items():
            job = jobs.get(job_id)
            if job is None:
                # No row: the job was deleted (its files after its row) and nothing reads these.
                # A job's row is committed before any worker writes under its prefix.
                self._delete(store, keys, result.job_files)
                log.info("job %s no longer exists: removed %d object(s)", job_id, len(keys))
                continue
            status, winner = job
            if status not in TERMINAL_STATUSES:
                continue
            parsed = {key: parse_job_key(key) for key in keys}
            checkpoints = [k for k, p in parsed.items() if p and p.area == "checkpoints"]
            if checkpoints:
                self._delete(store, checkpoints, result.checkpoints)
                log.info("job %s (%s): removed %d checkpoint object(s)",
                         job_id, status, len(checkpoints))  # fmt: skip
            # Legacy artifacts (attempt 0) are what rows from before per-attempt folders name.
            losers = [
                k
                for k, p in parsed.items()
                if p and p.area == "artifacts" and p.attempt not in (0, winner)
            ]
            if losers:
                # Asked at the delete: the rows are the final word on what a job serves (a
                # database downgraded and upgraded again has lost artifacts_attempt).
                named = self._artifact_keys(losers)
                losers = [k for k in losers if k not in named]
            if losers:
                self._delete(store, losers, result.lost_artifacts)
                log.info("job %s (%s): removed %d artifact(s) of attempts other than %s",
                         job_id, status, len(losers), winner)  # fmt: skip

    def _jobs(self, job_ids: list[str]) -> dict[str, tuple[str, int | None]]:
        """Job id -> (status, the attempt whose artifacts it serves) for the rows that exist."""
        found: dict[str, tuple[str, int | None]] = {}
        with self.services.session_scope() as session:
            for chunk in _chunks(job_ids):
                rows = session.execute(
                    select(Job.id, Job.status, Job.artifacts_attempt).where(Job.id.in_(chunk))
                )
                found.update({row.id: (row.status, row.artifacts_attempt) for row in rows})
        return found

    def _artifact_keys(self, keys: list[str]) -> set[str]:
        """The ``keys`` an artifact row names."""
        found: set[str] = set()
        with self.services.session_scope() as session:
            for chunk in _chunks(keys):
                found.update(
                    session.scalars(
                        select(Artifact.storage_key).where(Artifact.storage_key.in_(chunk))
                    )
                )
        return found

    # -- teachers/<sha256>, datasets/<sha256> ------------------------------------------------------
    def _sweep_uploads(
        self, store: ObjectStore, found: list[ObjectInfo], result: StoreSweepResult
    ) -> None:
        cutoff = utcnow() - timedelta(seconds=self.grace_s)
        old = {info.key: info for info in found if info.modified < cutoff}
        if not old:
            return
        referenced = self._referenced(list(old))
        for key, info in old.items():
            # Asked again right before the delete: a row written since the page's query (an
            # upload of the same content reuses the stored object) keeps the object.
            if key in referenced or self._referenced([key]):
                continue
            self._delete(store, [key], result.uploads)
            log.info("removed %s: no teacher, data set or job refers to it (%d bytes, last "
                     "written %s)", key, info.size, info.modified.isoformat())  # fmt: skip

    def _referenced(self, keys: list[str]) -> set[str]:
        """The ``keys`` a row still refers to: a live teacher, a deleted teacher that a job
        still names, or a data set (data sets are never deleted)."""
        found: set[str] = set()
        teacher_kept = or_(
            Teacher.deleted_at.is_(None), exists().where(Job.teacher_id == Teacher.id)
        )
        with self.services.session_scope() as session:
            for chunk in _chunks(keys):
                query = union(
                    select(Teacher.storage_key).where(Teacher.storage_key.in_(chunk), teacher_kept),
                    select(Dataset.storage_key).where(Dataset.storage_key.in_(chunk)),
                )
                found.update(session.scalars(query))
        return found

    def _database_is_empty(self) -> bool:
        with self.services.session_scope() as session:
            return not any(
                session.scalar(select(exists().select_from(model)))
                for model in (Job, Teacher, Dataset)
            )

    @staticmethod
    def _delete(store: ObjectStore, keys: list[str], into: list[str]) -> None:
        for key in keys:
            store.delete(key)
            into.append(key)
