"""Typed views of the API's JSON objects.

Parsing is deliberately lenient: a field the service adds later must not break an older client
(API.md allows new fields at any time), so every known field has a default and the whole
object, unknown members included, stays in ``raw``. ``raw`` is also what the CLI prints with
``--json``, so machine output is exactly what the service sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cake_shared.status import TERMINAL_STATUSES, JobPhase, JobStatus

#: Statuses after which a job never changes again (``cake_shared.status.TERMINAL_STATUSES``,
#: under the name this package has always exported).
FINISHED_STATUSES: frozenset[str] = TERMINAL_STATUSES


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 (with ``Z``) to an aware datetime; None for missing or unreadable values."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return ()


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


@dataclass
class Teacher:
    """An uploaded TorchScript classifier (``tch_…``)."""

    id: str
    name: str | None = None
    sha256: str = ""
    size_bytes: int = 0
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    parameters: int = 0
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Teacher:
        return cls(
            id=str(data.get("id", "")),
            name=data.get("name"),
            sha256=str(data.get("sha256", "")),
            size_bytes=_int(data.get("size_bytes")),
            input_shape=_shape(data.get("input_shape")),
            num_classes=_int(data.get("num_classes")),
            parameters=_int(data.get("parameters")),
            created_at=parse_time(data.get("created_at")),
            raw=dict(data),
        )


@dataclass
class Dataset:
    """An evaluation data set (``ds_…``): used by the service to report accuracy only."""

    id: str
    name: str | None = None
    num_examples: int = 0
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    sha256: str = ""
    size_bytes: int = 0
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dataset:
        return cls(
            id=str(data.get("id", "")),
            name=data.get("name"),
            num_examples=_int(data.get("num_examples")),
            input_shape=_shape(data.get("input_shape")),
            num_classes=_int(data.get("num_classes")),
            sha256=str(data.get("sha256", "")),
            size_bytes=_int(data.get("size_bytes")),
            created_at=parse_time(data.get("created_at")),
            raw=dict(data),
        )


@dataclass
class JobError:
    """Why a job failed: a machine-readable ``code`` and a ``message`` a user can act on."""

    code: str
    message: str

    @classmethod
    def from_json(cls, data: Any) -> JobError | None:
        if not isinstance(data, dict):
            return None
        return cls(code=str(data.get("code", "internal")), message=str(data.get("message", "")))


@dataclass
class JobEvent:
    """One line of a job's log (``evt_…``), from the JSON list or the SSE stream."""

    id: str
    type: str = "message"
    message: str = ""
    level: str = "info"
    data: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobEvent:
        payload = data.get("data")
        return cls(
            id=str(data.get("id", "")),
            type=str(data.get("type", "message")),
            message=str(data.get("message", "")),
            level=str(data.get("level", "info")),
            data=dict(payload) if isinstance(payload, dict) else {},
            created_at=parse_time(data.get("created_at")),
            raw=dict(data),
        )

    @property
    def phase(self) -> str | None:
        value = self.data.get("phase")
        return str(value) if value is not None else None

    @property
    def progress(self) -> float | None:
        value = self.data.get("progress")
        return float(value) if isinstance(value, int | float) else None

    @property
    def phase_progress(self) -> float | None:
        value = self.data.get("phase_progress")
        return float(value) if isinstance(value, int | float) else None


@dataclass
class Artifact:
    """A file a succeeded job produced (``student.pt``, ``manifest.json``, …)."""

    name: str
    size_bytes: int = 0
    sha256: str = ""
    content_type: str = "application/octet-stream"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            name=str(data.get("name", "")),
            size_bytes=_int(data.get("size_bytes")),
            sha256=str(data.get("sha256", "")),
            content_type=str(data.get("content_type", "application/octet-stream")),
            raw=dict(data),
        )


@dataclass
class Architecture:
    """A student architecture of the catalogue (``GET /v1/architectures``)."""

    name: str
    description: str = ""
    input_ranks: tuple[int, ...] = ()
    default_for_ranks: tuple[int, ...] = ()
    width: dict[str, float] = field(default_factory=dict)
    parameters: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Architecture:
        width = data.get("width")
        params = data.get("parameters")
        return cls(
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            input_ranks=_shape(data.get("input_ranks")),
            default_for_ranks=_shape(data.get("default_for_ranks")),
            width=dict(width) if isinstance(width, dict) else {},
            parameters=list(params) if isinstance(params, list) else [],
            raw=dict(data),
        )


@dataclass
class JobProgress:
    """What ``Job.wait(on_progress=...)`` reports: the job's state after each update.

    ``progress`` is the whole job's fraction and never decreases between two calls (the client
    clamps it, so a retried attempt replaying its early events cannot move a bar backwards);
    ``phase_progress`` is the fraction of the current phase when the service reported one.
    """

    job_id: str
    status: str
    phase: str
    progress: float
    phase_progress: float | None = None
    message: str = ""
    event: JobEvent | None = None


class JobCalls(Protocol):
    """The calls of ``Client.jobs`` (:class:`cake_client.client.Jobs`) that a :class:`Job` makes.

    Why a protocol rather than the ``Client`` type: ``client`` imports this module to build its
    objects, so this module naming ``Client`` back, even for type checkers only, would close an
    import cycle. The protocol keeps models below client: it says what a job needs, and
    ``Jobs`` satisfies it without knowing it.
    """

    def get(self, job_id: str) -> Job: ...

    # No defaults: a job always passes all three, and ``Jobs.wait`` has them.
    def wait(
        self,
        job_id: str,
        timeout: float | None,
        on_progress: Callable[[JobProgress], None] | None,
        poll_interval: float,
    ) -> Job: ...

    def cancel(self, job_id: str) -> Job: ...

    def events(self, job_id: str, after: str | None = None) -> Iterator[JobEvent]: ...

    def artifacts(self, job_id: str) -> list[Artifact]: ...

    def download(self, job_id: str, name: str, path: str | Path) -> Path: ...

    def download_student(self, job_id: str, path: str | Path) -> Path: ...


class JobOwner(Protocol):
    """What returned a :class:`Job` and serves its actions: a ``Client`` (its ``jobs``)."""

    @property
    def jobs(self) -> JobCalls: ...


@dataclass
class Job:
    """A distillation job (``job_…``).

    Objects returned by :class:`~cake_client.Client` remember the client, so ``job.wait()``,
    ``job.refresh()`` and ``job.download_student(path)`` work without passing it around.
    """

    id: str
    #: A :class:`~cake_shared.status.JobStatus` word; kept a ``str`` so that a status a newer
    #: service adds does not break this client (the members compare equal to the strings).
    status: str = JobStatus.QUEUED
    phase: str = JobPhase.QUEUED
    progress: float = 0.0
    teacher_id: str = ""
    eval_dataset_id: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: JobError | None = None
    attempts: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Where the service POSTs the job when it ends, and that delivery's state
    #: (``{"status", "attempts", "next_attempt_at"}``; None without a callback).
    callback_url: str | None = None
    webhook: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    _client: JobOwner | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], client: JobOwner | None = None) -> Job:
        spec, metrics, metadata = data.get("spec"), data.get("metrics"), data.get("metadata")
        return cls(
            id=str(data.get("id", "")),
            status=str(data.get("status", JobStatus.QUEUED)),
            phase=str(data.get("phase", JobPhase.QUEUED)),
            progress=_float(data.get("progress")),
            teacher_id=str(data.get("teacher_id", "")),
            eval_dataset_id=data.get("eval_dataset_id"),
            spec=dict(spec) if isinstance(spec, dict) else {},
            metrics=dict(metrics) if isinstance(metrics, dict) else {},
            error=JobError.from_json(data.get("error")),
            attempts=_int(data.get("attempts")),
            metadata=dict(metadata) if isinstance(metadata, dict) else {},
            cancel_requested=bool(data.get("cancel_requested", False)),
            created_at=parse_time(data.get("created_at")),
            started_at=parse_time(data.get("started_at")),
            finished_at=parse_time(data.get("finished_at")),
            callback_url=data.get("callback_url"),
            webhook=dict(webhook) if isinstance(webhook := data.get("webhook"), dict) else None,
            raw=dict(data),
            _client=client,
        )

    # -- state ---------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True once the job is succeeded, failed or canceled (it never changes again)."""
        return self.status in FINISHED_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == JobStatus.SUCCEEDED

    # -- actions through the client that returned this job --------------------------------------
    def _require_client(self) -> JobOwner:
        if self._client is None:
            raise RuntimeError(
                "this Job was not returned by a Client; use client.jobs.get(job_id) first"
            )
        return self._client

    def refresh(self) -> Job:
        """The job as the service sees it now (a new object; this one is not changed)."""
        return self._require_client().jobs.get(self.id)

    def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[[JobProgress], None] | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job finishes and return its final state (see ``Jobs.wait``)."""
        return self._require_client().jobs.wait(
            self.id, timeout=timeout, on_progress=on_progress, poll_interval=poll_interval
        )

    def cancel(self) -> Job:
        return self._require_client().jobs.cancel(self.id)

    def events(self, after: str | None = None) -> Iterator[JobEvent]:
        return self._require_client().jobs.events(self.id, after=after)

    def artifacts(self) -> list[Artifact]:
        return self._require_client().jobs.artifacts(self.id)

    def download(self, name: str, path: str | Path) -> Path:
        return self._require_client().jobs.download(self.id, name, path)

    def download_student(self, path: str | Path) -> Path:
        """Download ``student.pt`` to ``path``, checked against the artifact list's sha256."""
        return self._require_client().jobs.download_student(self.id, path)


@dataclass
class Page:
    """One page of a list endpoint, for callers that paginate by hand."""

    data: list[Any]
    has_more: bool = False
    next_after: str | None = None
