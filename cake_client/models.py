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


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass
class OnnxExport:
    """The ``onnx`` entry of a manifest's ``deployment`` section: was ``student.onnx`` kept
    (exported and checked against the TorchScript student on ``samples`` inputs), and why."""

    kept: bool = False
    opset: int = 0
    samples: int = 0
    top1_agreement: float | None = None
    max_abs_logit_diff: float | None = None
    reason: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> OnnxExport:
        data = data if isinstance(data, dict) else {}
        return cls(
            kept=bool(data.get("kept", False)),
            opset=_int(data.get("opset")),
            samples=_int(data.get("samples")),
            top1_agreement=_float_or_none(data.get("top1_agreement")),
            max_abs_logit_diff=_float_or_none(data.get("max_abs_logit_diff")),
            reason=str(data.get("reason") or ""),
            raw=dict(data),
        )


@dataclass
class Int8Quantization:
    """The ``int8`` entry of a manifest's ``deployment`` section: ``student.int8.onnx`` is
    kept only when ``ratio`` (its agreement with the teacher over the fp32 student's) is at
    least ``min_ratio``; ``reason`` says what happened either way."""

    kept: bool = False
    format: str = ""
    calibration_samples: int = 0
    agreement_fp32: float | None = None
    agreement_int8: float | None = None
    ratio: float | None = None
    min_ratio: float | None = None
    reason: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> Int8Quantization:
        data = data if isinstance(data, dict) else {}
        return cls(
            kept=bool(data.get("kept", False)),
            format=str(data.get("format") or ""),
            calibration_samples=_int(data.get("calibration_samples")),
            agreement_fp32=_float_or_none(data.get("agreement_fp32")),
            agreement_int8=_float_or_none(data.get("agreement_int8")),
            ratio=_float_or_none(data.get("ratio")),
            min_ratio=_float_or_none(data.get("min_ratio")),
            reason=str(data.get("reason") or ""),
            raw=dict(data),
        )


@dataclass
class DeploymentRow:
    """One row of the deployment table: a form of the model, its size, its CPU latency at
    batch 1 and 64 (milliseconds, the median of ``repeats`` runs) and its top-1 agreement with
    the teacher (None for the teacher itself)."""

    artifact: str
    role: str = ""
    format: str = ""
    runtime: str = ""
    size_bytes: int = 0
    parameters: int = 0
    latency_ms_batch_1: float | None = None
    latency_ms_batch_64: float | None = None
    agreement_teacher: float | None = None
    repeats: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeploymentRow:
        return cls(
            artifact=str(data.get("artifact", "")),
            role=str(data.get("role", "")),
            format=str(data.get("format", "")),
            runtime=str(data.get("runtime", "")),
            size_bytes=_int(data.get("size_bytes")),
            parameters=_int(data.get("parameters")),
            latency_ms_batch_1=_float_or_none(data.get("latency_ms_batch_1")),
            latency_ms_batch_64=_float_or_none(data.get("latency_ms_batch_64")),
            agreement_teacher=_float_or_none(data.get("agreement_teacher")),
            repeats=_int(data.get("repeats")),
            raw=dict(data),
        )


@dataclass
class Deployment:
    """The ``deployment`` section of a succeeded job's ``manifest.json``: what became of the
    ONNX export and the int8 quantization, how latency was measured, and the table (teacher,
    ``student.pt``, ``student.onnx``, ``student.int8.onnx``; a row per file the job kept)."""

    onnx: OnnxExport
    int8: Int8Quantization
    latency: dict[str, Any] = field(default_factory=dict)
    table: list[DeploymentRow] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        latency, table = data.get("latency"), data.get("table")
        return cls(
            onnx=OnnxExport.from_json(data.get("onnx")),
            int8=Int8Quantization.from_json(data.get("int8")),
            latency=dict(latency) if isinstance(latency, dict) else {},
            table=[
                DeploymentRow.from_json(row)
                for row in (table if isinstance(table, list) else [])
                if isinstance(row, dict)
            ],
            raw=dict(data),
        )

    @classmethod
    def from_manifest(cls, manifest: Any) -> Deployment | None:
        """The section of a parsed ``manifest.json``; None for a job that ran before the
        service exported ONNX (its manifest has no such section)."""
        section = manifest.get("deployment") if isinstance(manifest, dict) else None
        return cls.from_json(section) if isinstance(section, dict) else None

    def row(self, artifact: str) -> DeploymentRow | None:
        """The row of ``artifact`` (``student.onnx``, …); None when the job did not keep it."""
        return next((r for r in self.table if r.artifact == artifact), None)


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

    def download_onnx(self, job_id: str, path: str | Path, int8: bool = False) -> Path: ...

    def manifest(self, job_id: str) -> dict[str, Any]: ...

    def deployment(self, job_id: str) -> Deployment | None: ...


class JobOwner(Protocol):
    """What returned a :class:`Job` and serves its actions: a ``Client`` (its ``jobs``)."""

    @property
    def jobs(self) -> JobCalls: ...


@dataclass
class Job:
    """A distillation job (``job_…``).

    Objects returned by :class:`~cake_client.Client` remember the client, so ``job.wait()``,
    ``job.refresh()``, ``job.download_student(path)`` and ``job.download_onnx(path)`` work
    without passing it around.
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

    def download_onnx(self, path: str | Path, int8: bool = False) -> Path:
        """Download ``student.onnx`` (``int8=True``: ``student.int8.onnx``) to ``path``, sha256
        checked; ``ArtifactUnavailable`` (with the manifest's reason) when the job has none."""
        return self._require_client().jobs.download_onnx(self.id, path, int8=int8)

    def manifest(self) -> dict[str, Any]:
        """The job's ``manifest.json``, parsed (sha256 checked)."""
        return self._require_client().jobs.manifest(self.id)

    def deployment(self) -> Deployment | None:
        """The manifest's deployment table and what became of ONNX and int8 (see
        :class:`Deployment`); None for a job that ran before the service exported ONNX."""
        return self._require_client().jobs.deployment(self.id)


@dataclass
class Page:
    """One page of a list endpoint, for callers that paginate by hand."""

    data: list[Any]
    has_more: bool = False
    next_after: str | None = None
