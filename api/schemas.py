"""Request and response models of the REST API (pydantic v2), separate from the ORM models.

The job-spec request models (``StudentIn``, ``LossWeightsIn``, ``SynthesisIn``, ``TrainingIn``,
``JobSpecIn``) are *built from the engine's spec* (``cake_core.config.spec_fields``): every field,
its type, range, choices and description are declared once there, so ``/openapi.json``
documents exactly what the engine accepts and no field can be added to one side only. What the
API adds is its own: every field optional (null: the preset's value), strict JSON types, and the
defaults and preset values spelled out in each description. Validation here is the first line
(types, unknown fields, ranges, with a ``loc`` per field); ``resolve_spec`` stays the authority
(cross-field rules, presets).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from cake_core.config import (
    PRESETS,
    JobSpec,
    LossWeights,
    SpecField,
    StudentSpec,
    SynthesisSpec,
    TrainingSpec,
    spec_fields,
)
from cake_shared.mlflow_spec import MlflowURIError, validate_mlflow_uri
from cake_shared.status import JobPhase, JobStatus, WebhookStatus
from cake_shared.webhooks import MAX_URL_LENGTH, CallbackURLError, validate_callback_url

# --------------------------------------------------------------------------------------------
# documentation helpers: defaults and ranges come from the engine
# --------------------------------------------------------------------------------------------


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


_PRESET_VALUES: dict[str, dict[str, Any]] = {name: _flatten(v) for name, v in PRESETS.items()}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "null"
    return str(value)


def _describe(spec: SpecField) -> str:
    """The engine's description of a setting plus its reference default, what each preset
    sets, and its range or choices."""
    path = spec.path
    parts = [(spec.info.description or "").rstrip(".") + "."]
    default = spec.default_note or _fmt(spec.default)
    by_preset = [
        f"{name}: {_fmt(values[path])}"
        for name, values in sorted(_PRESET_VALUES.items())
        if path in values
    ]
    parts.append(
        f"Reference default {default}"
        + (f" (presets {'; '.join(by_preset)})." if by_preset else ".")
    )
    if (limits := spec.limits) is not None:
        parts.append(f"Range {_fmt(limits[0])}..{_fmt(limits[1])}.")
    if (choices := spec.choices) is not None:
        parts.append("One of " + ", ".join(choices) + ".")
    parts.append("Omitted or null: the preset's value, else the reference default.")
    return " ".join(parts)


class _SpecPart(BaseModel):
    """Strict: a string where a number belongs, or an unknown field, is a 422 naming it."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------------------------
# job spec input, built from the engine's definition
# --------------------------------------------------------------------------------------------


def _input_field(spec: SpecField, sections: dict[type, type[BaseModel]]) -> tuple[Any, Any]:
    """``(type, Field)`` of one spec setting in a request model: optional, null by default.

    Settings (numbers, flags, choices) are described with their defaults and ranges; free text
    and nested sections keep the engine's description as is. The range, length cap and schema
    extras are the engine's; its validators (integral floats for integers) are not: the API
    takes JSON as typed.
    """
    info = spec.info
    value_type = sections[spec.section] if spec.section is not None else spec.value_type
    plain = spec.section is not None or spec.value_type is str
    low, high = spec.limits or (None, None)
    extra: dict[str, Any] = {}
    if spec.max_length is not None:
        extra["max_length"] = spec.max_length
    if info.json_schema_extra is not None:
        extra["json_schema_extra"] = info.json_schema_extra
    return (
        value_type | None,
        Field(
            None,
            ge=low,
            le=high,
            description=info.description if plain else _describe(spec),
            **extra,
        ),
    )


def _input_model(
    name: str, section: type, prefix: str, sections: dict[type, type[BaseModel]]
) -> type[BaseModel]:
    """The request model of one spec section (``StudentIn`` for ``StudentSpec``)."""
    fields = {f.name: _input_field(f, sections) for f in spec_fields(section, prefix)}
    model = create_model(name, __base__=_SpecPart, __module__=__name__, **fields)
    sections[section] = model
    return model


_SECTIONS: dict[type, type[BaseModel]] = {}
StudentIn = _input_model("StudentIn", StudentSpec, "student.", _SECTIONS)
LossWeightsIn = _input_model("LossWeightsIn", LossWeights, "synthesis.weights.", _SECTIONS)
SynthesisIn = _input_model("SynthesisIn", SynthesisSpec, "synthesis.", _SECTIONS)
TrainingIn = _input_model("TrainingIn", TrainingSpec, "training.", _SECTIONS)


def _check_callback_url(cls: type[BaseModel], value: str | None) -> str | None:
    """``callback_url``'s syntax (the deployment's reachability rules are checked later)."""
    if value is None:
        return None
    try:
        return validate_callback_url(value)
    except CallbackURLError as exc:
        raise ValueError(str(exc)) from None


def _check_mlflow_uri(cls: type[BaseModel], value: str | None) -> str | None:
    """``mlflow_tracking_uri``'s syntax (who may name one is checked later, with the tenant)."""
    if value is None:
        return None
    try:
        return validate_mlflow_uri(value)
    except MlflowURIError as exc:
        raise ValueError(str(exc)) from None


_SERVICE_FIELDS: dict[str, Any] = {
    "eval_dataset_id": (
        str | None,
        Field(
            None,
            description=(
                "A data set from POST /v1/datasets used only to report teacher and student "
                "accuracy; its input shape must equal the teacher's."
            ),
            examples=["ds_01J0000000000000000000000"],
        ),
    ),
    "metadata": (
        dict[str, Any] | None,
        Field(
            None,
            description=(
                "Free-form JSON object stored with the job and returned as is (16 KiB max)."
            ),
            examples=[{"pipeline": "nightly"}],
        ),
    ),
    "callback_url": (
        str | None,
        Field(
            None,
            max_length=MAX_URL_LENGTH,
            description=(
                "When the job ends (succeeded, failed or canceled), POST the job object here, "
                "signed with the tenant's webhook secret (header Cake-Signature, see GET "
                "/v1/webhooks/secret); retried with backoff until a 2xx. An http(s) URL of at "
                "most 2048 characters, without credentials or #fragment."
            ),
            examples=["https://ci.example.com/hooks/cake"],
        ),
    ),
    "mlflow_tracking_uri": (
        str | None,
        Field(
            None,
            max_length=MAX_URL_LENGTH,
            description=(
                "When the job succeeds, log its spec, metrics and artifacts to this MLflow "
                "tracking server and register the student as a model version (instead of the "
                "service's own server, if it has one). Only for tenants the operator allows "
                "(CAKE_MLFLOW_SPEC_TENANTS); an http(s) URL without credentials or #fragment. "
                "Kept in the job's spec; the engine never sees it."
            ),
            examples=["https://mlflow.example.com"],
        ),
    ),
}
"""What a job has besides its spec: the service's own fields of ``JobSpecIn``."""

JobSpecIn = create_model(
    "JobSpecIn",
    __base__=_SpecPart,
    __module__=__name__,
    __doc__="A job spec without the teacher: the one-shot form's ``spec`` part.",
    __validators__={
        "_callback_url": field_validator("callback_url")(_check_callback_url),
        "_mlflow_tracking_uri": field_validator("mlflow_tracking_uri")(_check_mlflow_uri),
    },
    **{f.name: _input_field(f, _SECTIONS) for f in spec_fields(JobSpec)},
    **_SERVICE_FIELDS,
)


class JobCreate(JobSpecIn):  # type: ignore[misc, valid-type]
    """``POST /v1/jobs`` as JSON: only ``teacher_id`` is required."""

    teacher_id: str = Field(
        ..., description="The teacher to distill (from POST /v1/teachers).", examples=["tch_…"]
    )


# Documentation-only models of the multipart forms (the routes parse them by streaming).


class TeacherUploadForm(BaseModel):
    file: bytes = Field(
        ...,
        description=(
            "TorchScript archive (torch.jit.save) of a classifier: input batch -> logits [B, C]."
        ),
        json_schema_extra={"format": "binary"},
    )
    input_shape: str = Field(
        ...,
        description="JSON array of one input's shape without the batch dimension: [1,28,28], [13].",
        examples=["[1,28,28]"],
    )
    name: str | None = Field(None, description="A label (at most 256 characters).")
    num_classes: int | None = Field(
        None, description="If given, must equal the class count the probe finds."
    )


class OneShotJobForm(BaseModel):
    teacher: bytes = Field(
        ...,
        description="The teacher file, as in POST /v1/teachers.",
        json_schema_extra={"format": "binary"},
    )
    input_shape: str = Field(..., description="JSON array of the teacher's input shape.")
    spec: str = Field(
        "{}",
        description="JSON object: the job spec of POST /v1/jobs without teacher_id (JobSpecIn).",
    )
    name: str | None = Field(None, description="A label for the teacher.")
    num_classes: int | None = Field(None, description="If given, must equal the probe's count.")


class DatasetUploadForm(BaseModel):
    file: bytes = Field(
        ...,
        description="An .npz with x (float, [N, *input_shape]) and y (int, [N]).",
        json_schema_extra={"format": "binary"},
    )
    name: str | None = Field(None, description="A label.")


# --------------------------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------------------------


class ProblemError(BaseModel):
    loc: list[str | int] = Field(..., description="Where: e.g. ['body', 'synthesis', 'groups'].")
    msg: str = Field(..., description="What is wrong there.")


class Problem(BaseModel):
    """RFC 9457 problem document (media type application/problem+json)."""

    type: str = Field(..., description="URI of the problem type.")
    title: str = Field(..., description="The HTTP status phrase.")
    status: int = Field(..., description="The HTTP status code.")
    detail: str = Field(..., description="What went wrong, for a person to act on.")
    code: str = Field(
        ...,
        description=(
            "Machine-readable: validation_error, teacher_invalid, dataset_invalid, "
            "payload_too_large, unauthorized, not_found, conflict, not_ready, rate_limited, "
            "internal."
        ),
    )
    instance: str | None = Field(None, description="The request path.")
    errors: list[ProblemError] | None = Field(
        None, description="Per-field problems (validation errors only)."
    )


class Teacher(BaseModel):
    id: str = Field(..., description="tch_… identifier.")
    object: Literal["teacher"] = Field("teacher", description="Always 'teacher'.")
    name: str | None = Field(None, description="The label given at upload.")
    sha256: str = Field(..., description="SHA-256 of the uploaded file (hex).")
    size_bytes: int = Field(..., description="File size in bytes.")
    input_shape: list[int] = Field(..., description="One input's shape without the batch dim.")
    num_classes: int = Field(..., description="Number of logits the model returns.")
    parameters: int = Field(..., description="Number of parameters of the model.")
    created_at: datetime = Field(..., description="Upload time, ISO 8601 UTC.")


class Dataset(BaseModel):
    id: str = Field(..., description="ds_… identifier.")
    object: Literal["dataset"] = Field("dataset", description="Always 'dataset'.")
    name: str | None = Field(None, description="The label given at upload.")
    num_examples: int = Field(..., description="N, the number of examples.")
    input_shape: list[int] = Field(..., description="x's shape without N.")
    num_classes: int = Field(..., description="max(y) + 1.")
    sha256: str = Field(..., description="SHA-256 of the uploaded file (hex).")
    size_bytes: int = Field(..., description="File size in bytes.")
    created_at: datetime = Field(..., description="Upload time, ISO 8601 UTC.")


class JobError(BaseModel):
    code: str = Field(..., description="Machine-readable reason, e.g. synthesis_diverged.")
    message: str = Field(..., description="What went wrong and what to change.")


class JobWebhook(BaseModel):
    status: WebhookStatus = Field(
        ...,
        description=(
            "waiting: the job has not ended; pending: being delivered or retried; delivered: "
            "the receiver answered 2xx; failed: given up after the bounded retries."
        ),
    )
    attempts: int = Field(..., description="Delivery attempts made so far.")
    next_attempt_at: datetime | None = Field(
        None, description="While pending: when the next attempt is due."
    )


class Job(BaseModel):
    id: str = Field(..., description="job_… identifier.")
    object: Literal["job"] = Field("job", description="Always 'job'.")
    status: JobStatus = Field(
        ..., description="queued -> running -> succeeded | failed | canceled."
    )
    phase: JobPhase = Field(
        ...,
        description=(
            "queued; while running: synthesizing, training, evaluating, exporting; canceled "
            "when canceled before it started."
        ),
    )
    progress: float = Field(..., ge=0.0, le=1.0, description="0..1, monotone.")
    teacher_id: str = Field(..., description="The teacher being distilled.")
    eval_dataset_id: str | None = Field(None, description="Evaluation data set, if any.")
    spec: dict[str, Any] = Field(
        ...,
        description=(
            "The resolved spec: student, synthesis, training, preset and seed with every default "
            "filled in (student.arch included). student.width is null while a width left to "
            "the parameter budget is not chosen yet, and the chosen width once the job "
            "succeeded; student.width_reason says where the width came from; "
            "mlflow_tracking_uri when the job named one."
        ),
    )
    metrics: dict[str, Any] = Field(
        ...,
        description=(
            "When succeeded: agreement_synthetic, fidelity_estimate (data-free estimate of the "
            "agreement on real data), teacher_parameters, student_parameters, compression "
            "(teacher_parameters / student_parameters), synthesis_seconds, training_seconds, "
            "samples_per_second; with an eval data set also teacher_accuracy, "
            "student_accuracy, agreement_eval."
        ),
    )
    error: JobError | None = Field(None, description="Why the job failed (failed jobs only).")
    attempts: int = Field(..., description="How many times a worker has started the job.")
    metadata: dict[str, Any] = Field(..., description="The metadata given at creation.")
    cancel_requested: bool = Field(
        False, description="A cancel was asked for; a running job stops at its next step."
    )
    created_at: datetime = Field(..., description="ISO 8601 UTC.")
    started_at: datetime | None = Field(None, description="When a worker started it.")
    finished_at: datetime | None = Field(None, description="When it ended.")
    callback_url: str | None = Field(None, description="Where the job is POSTed when it ends.")
    webhook: JobWebhook | None = Field(
        None, description="The callback's delivery; null without callback_url."
    )


class Event(BaseModel):
    id: str = Field(..., description="evt_… identifier; use as ?after= to resume.")
    created_at: datetime = Field(..., description="ISO 8601 UTC.")
    level: str = Field(..., description="info, warning or error.")
    type: str = Field(..., description="E.g. queued, started, phase, progress, succeeded.")
    message: str = Field(..., description="Human-readable line.")
    data: dict[str, Any] = Field(..., description="Structured details.")


class Artifact(BaseModel):
    name: str = Field(
        ...,
        description="student.pt, student.onnx, student.int8.onnx (each ONNX file only when the "
        "job kept it; manifest.json's deployment section says why not), manifest.json, "
        "curves.png, report.md, samples.png (image inputs)",
    )
    size_bytes: int = Field(..., description="Size in bytes.")
    sha256: str = Field(..., description="SHA-256 (hex); also the download's ETag.")
    content_type: str = Field(..., description="Media type of the download.")


class WidthRange(BaseModel):
    default: float | None = Field(
        ...,
        description=(
            "Width of a job that gives none; null: chosen per job, the largest width whose "
            "student has at most half the teacher's parameters."
        ),
    )
    min: float = Field(..., description="Smallest accepted width.")
    max: float = Field(..., description="Largest accepted width.")


class ParameterCount(BaseModel):
    input_shape: list[int] = Field(..., description="Example input shape.")
    num_classes: int = Field(..., description="Example class count.")
    width: float = Field(..., description="Width multiplier.")
    parameters: int = Field(..., description="Parameter count for that configuration.")


class Architecture(BaseModel):
    name: str = Field(..., description="Value for student.arch.")
    object: Literal["architecture"] = Field("architecture", description="Always 'architecture'.")
    description: str = Field(..., description="What it is and what it is for.")
    input_ranks: list[int] = Field(
        ...,
        description="Accepted input ranks without batch: 1 [features], 2 [seq, dim], 3 [C,H,W].",
    )
    default_for_ranks: list[int] = Field(
        ..., description="Input ranks for which this is the default student."
    )
    width: WidthRange = Field(..., description="Accepted student.width.")
    parameters: list[ParameterCount] = Field(
        ...,
        description=(
            "Parameter counts for example inputs of each accepted rank, at width 1 and 0.5."
        ),
    )


class _ListBase(BaseModel):
    object: Literal["list"] = Field("list", description="Always 'list'.")
    has_more: bool = Field(False, description="Whether another page follows.")
    next_after: str | None = Field(
        None, description="Pass as ?after= for the next page; null on the last page."
    )


class TeacherList(_ListBase):
    data: list[Teacher] = Field(..., description="Newest first.")


class JobList(_ListBase):
    data: list[Job] = Field(..., description="Newest first.")


class DatasetList(_ListBase):
    data: list[Dataset] = Field(..., description="Newest first.")


class EventList(_ListBase):
    data: list[Event] = Field(..., description="Oldest first.")


class ArtifactList(_ListBase):
    data: list[Artifact] = Field(..., description="By name.")


class ArchitectureList(_ListBase):
    data: list[Architecture] = Field(..., description="By name.")


class Health(BaseModel):
    status: Literal["ok"] = Field("ok", description="The process is up.")


class LiveWorker(BaseModel):
    id: str = Field(..., description="The worker's name (cake-<pid>@<host>).")
    queues: list[str] = Field(..., description="The queues it serves.")
    device: str = Field(..., description="cuda or cpu.")
    last_seen: datetime = Field(..., description="Its last heartbeat.")


class WorkersReport(BaseModel):
    live: dict[str, int] = Field(..., description="Live workers per queue (gpu, cpu).")
    missing: list[str] = Field(
        ...,
        description="Queues with no live worker that hold queued jobs or that new jobs go to: "
        "their jobs stay queued (with a no_worker event) until a worker starts.",
    )
    queued: dict[str, int] = Field(..., description="Queued jobs per queue.")
    default_queue: str = Field(..., description="Where a new job goes now (auto resolved).")
    detail: str = Field(..., description="The same in words.")
    workers: list[LiveWorker] = Field(..., description="The live workers.")


class Ready(BaseModel):
    status: Literal["ready"] = Field("ready", description="Every dependency answered.")
    checks: dict[str, str] = Field(..., description="database, store, broker: 'ok'.")
    workers: WorkersReport | None = Field(
        None,
        description="Live workers per queue from their heartbeats, and the queues missing one "
        "(the API is ready without workers; jobs then wait). Absent when it cannot be read.",
    )


ANY_CLIENT_ERROR: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "model": Problem,
        "description": (
            "Any other client error, as a problem document: unauthorized (401), "
            "unsupported_media_type (415), validation_error (422), rate_limited (429), ..."
        ),
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
}
"""Router-wide ``responses`` of every /v1 router: documents that each operation may answer any
4xx as ``application/problem+json`` (auth, rate limits and validation apply everywhere), and
stops FastAPI from documenting its own ``HTTPValidationError`` JSON body for 422, which this
API never sends."""


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses (problem+json bodies)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {
            "model": Problem,
            "description": {
                404: "not_found: unknown id",
                409: "conflict",
                413: "payload_too_large",
                416: "range not satisfiable",
                422: "validation_error, teacher_invalid or dataset_invalid",
                503: "not_ready",
            }.get(code, "error"),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
    return out
