"""The last body of ``GET /v1/jobs/{id}`` per job, kept as bytes while the job is unchanged.

A status poll without ``If-None-Match`` needs the whole job, but the job's ``updated_at`` (two
columns of its row, read anyway for the tenant check and the ``ETag``) says whether the body
built last time is still the body: every write bumps it (:func:`api.serializers.job_etag`). A
hit then costs no ORM load, no validation and no JSON encoding: under a burst of pollers of
one job, all but the first read answer from here. Keyed by job id and that stamp, so a body
is never served for a state it was not built from; bounded, least recently used out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

#: Jobs whose last body is kept (a few KiB each).
MAX_JOBS = 2048


@dataclass(frozen=True)
class JobBody:
    """A job's serialised body, the ``updated_at`` it was built from, whether it had ended."""

    stamp: datetime | None
    content: bytes
    ended: bool


class JobBodies:
    """A thread-safe LRU of :class:`JobBody` by job id (the route reads it on worker threads)."""

    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        self._max = max_jobs
        self._bodies: OrderedDict[str, JobBody] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, stamp: datetime | None) -> JobBody | None:
        """The kept body if it was built from the job as it is now (``stamp``), else None."""
        with self._lock:
            body = self._bodies.get(job_id)
            if body is None or body.stamp != stamp:
                return None
            self._bodies.move_to_end(job_id)
            return body

    def put(self, job_id: str, body: JobBody) -> None:
        with self._lock:
            self._bodies[job_id] = body
            self._bodies.move_to_end(job_id)
            while len(self._bodies) > self._max:
                self._bodies.popitem(last=False)
