"""Request and response models of the REST API (pydantic v2), separate from the ORM models.

The job-spec input models mirror ``cake_core.config``'s dataclasses; their defaults, presets,
ranges and choices are *read from the engine* so ``/openapi.json`` documents exactly what the
engine accepts. Validation here is the first line (types, unknown fields, ranges, with a ``loc``
per field); ``resolve_spec`` stays the authority (cross-field rules, presets).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cake_core.config import (
    CHOICES,
    LIMITS,
    PRESETS,
    InputOptimizer,
    JobSpec,
    NoiseSchedule,
    Parameterization,
    Prior,
    TrainOptimizer,
    TrainSchedule,
)
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


_REFERENCE: dict[str, Any] = _flatten(dataclasses.asdict(JobSpec()))
_PRESET_VALUES: dict[str, dict[str, Any]] = {name: _flatten(v) for name, v in PRESETS.items()}


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "null"
    return str(value)


def _describe(path: str, text: str, default_note: str | None = None) -> str:
    """``text`` plus the reference default, what each preset sets, and the allowed range."""
    parts = [text.rstrip(".") + "."]
    default = default_note or _fmt(_REFERENCE.get(path))
    by_preset = [
        f"{name}: {_fmt(values[path])}"
        for name, values in sorted(_PRESET_VALUES.items())
        if path in values
    ]
    parts.append(
        f"Reference default {default}"
        + (f" (presets {'; '.join(by_preset)})." if by_preset else ".")
    )
    if path in LIMITS:
        low, high = LIMITS[path]
        parts.append(f"Range {_fmt(low)}..{_fmt(high)}.")
    if path in CHOICES:
        parts.append("One of " + ", ".join(CHOICES[path]) + ".")
    parts.append("Omitted or null: the preset's value, else the reference default.")
    return " ".join(parts)


def _spec_field(path: str, text: str, default_note: str | None = None) -> Any:
    low, high = LIMITS.get(path, (None, None))
    return Field(None, ge=low, le=high, description=_describe(path, text, default_note))


class _SpecPart(BaseModel):
    """Strict: a string where a number belongs, or an unknown field, is a 422 naming it."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------------------------
# job spec input
# --------------------------------------------------------------------------------------------


class StudentIn(_SpecPart):
    arch: str | None = Field(
        None,
        description=(
            "Student architecture, one of GET /v1/architectures (mlp, lenet5, resnet18, vit). "
            "Default: lenet5 for a [C, H, W] teacher input, else mlp."
        ),
    )
    width: float | None = _spec_field(
        "student.width",
        "Scales channels and hidden units; 0.5 is the 'Half' variant, 1 the reference size. "
        "Omitted or null: chosen when the job runs, as the largest width (0.0625..1 in steps "
        "of 1/32) whose student has at most half the teacher's parameters (the smallest when "
        "none does); the job's spec then records the width and, in student.width_reason, why. "
        "An explicit width is used as given (a warning event when the student is larger than "
        "the teacher)",
        default_note="null (chosen from the teacher's size)",
    )
    width_reason: str | None = Field(
        None,
        max_length=2000,
        description=(
            "Output only: where the job's width came from ('given in the spec', or how it was "
            "chosen from the teacher's size). Accepted so a job's spec can be sent again as "
            "is; ignored on input."
        ),
    )


class LossWeightsIn(_SpecPart):
    cls: float | None = _spec_field("synthesis.weights.cls", "Weight of the classification loss")
    contr: float | None = _spec_field(
        "synthesis.weights.contr", "Weight of the contrastive loss between groups"
    )
    tv: float | None = _spec_field("synthesis.weights.tv", "Weight of the total-variation prior")
    entropy: float | None = _spec_field("synthesis.weights.entropy", "Weight of the entropy term")
    bn: float | None = _spec_field(
        "synthesis.weights.bn",
        "Weight of the BatchNorm-statistics prior (teachers with BatchNorm layers only)",
    )


class SynthesisIn(_SpecPart):
    num_samples: int | None = _spec_field(
        "synthesis.num_samples", "Number of synthetic inputs to create"
    )
    batch_size: int | None = _spec_field(
        "synthesis.batch_size",
        "Synthesis mini-batch size; must be a multiple of groups (rounded down to one when "
        "groups is lowered to the class count)",
    )
    groups: int | None = _spec_field(
        "synthesis.groups",
        "Classes per contrastive row; must not exceed the teacher's class count",
        default_note="10, lowered to the teacher's class count when it has fewer",
    )
    steps: int | None = _spec_field(
        "synthesis.steps", "Gradient steps on the inputs per mini-batch"
    )
    weights: LossWeightsIn | None = Field(None, description="Weights of the synthesis losses.")
    noise: float | None = _spec_field("synthesis.noise", "Step size of the first mini-batch")
    noise_schedule: NoiseSchedule | None = _spec_field(
        "synthesis.noise_schedule", "How the step size decays across mini-batches"
    )
    noise_decay_magnitude: float | None = _spec_field(
        "synthesis.noise_decay_magnitude",
        "Orders of magnitude the step size decays from the first to the last mini-batch",
    )
    langevin: bool | None = _spec_field(
        "synthesis.langevin", "Add Langevin noise after every step (LAKE)"
    )
    optimizer: InputOptimizer | None = _spec_field(
        "synthesis.optimizer", "Optimizer on the synthetic inputs"
    )
    prior: Prior | None = _spec_field(
        "synthesis.prior", "Distribution the synthetic inputs start from"
    )
    soft_labels: bool | None = _spec_field(
        "synthesis.soft_labels", "Store the teacher's softmax (true) or its argmax (false)"
    )
    chunk_batches: int | None = _spec_field(
        "synthesis.chunk_batches",
        "Mini-batches synthesized at once (0: automatic); speed and memory only",
    )
    snapshots: int | None = _spec_field(
        "synthesis.snapshots",
        "Also keep each sample at this many evenly spaced points of its trajectory; at most steps",
    )
    augment: bool | None = _spec_field(
        "synthesis.augment", "Show the teacher randomly shifted images during synthesis"
    )
    parameterization: Parameterization | None = _spec_field(
        "synthesis.parameterization",
        "What the optimizer moves: the pixels, or their 1/frequency-scaled spectrum (fourier; "
        "images only)",
    )


class TrainingIn(_SpecPart):
    epochs: int | None = _spec_field("training.epochs", "Training epochs of the student")
    batch_size: int | None = _spec_field("training.batch_size", "Training batch size")
    lr: float | None = _spec_field("training.lr", "Peak learning rate")
    optimizer: TrainOptimizer | None = _spec_field(
        "training.optimizer", "Student optimizer (sgd is Nesterov SGD)"
    )
    schedule: TrainSchedule | None = _spec_field("training.schedule", "Learning-rate schedule")
    weight_decay: float | None = _spec_field("training.weight_decay", "Weight decay")
    temperature: float | None = _spec_field("training.temperature", "Distillation temperature")
    holdout_fraction: float | None = _spec_field(
        "training.holdout_fraction",
        "Share of synthetic samples held out to measure agreement_synthetic",
    )
    relabel: bool | None = _spec_field(
        "training.relabel", "Ask the teacher again for every training batch"
    )
    mixup: float | None = _spec_field("training.mixup", "Mixup strength (needs relabel)")
    input_noise: float | None = _spec_field(
        "training.input_noise", "Gaussian noise added to training inputs (needs relabel)"
    )
    adversarial: float | None = _spec_field(
        "training.adversarial",
        "Step size moving half of each batch toward teacher-student disagreement",
    )
    adversarial_steps: int | None = _spec_field(
        "training.adversarial_steps", "Signed-gradient steps of that search"
    )
    translate: float | None = _spec_field(
        "training.translate",
        "Random shift of each training image, up to this share of its side (images; needs relabel)",
    )
    noise_mix: float | None = _spec_field(
        "training.noise_mix",
        "Share of each training batch replaced by fresh standard-normal noise (needs relabel)",
    )
    cutmix: float | None = _spec_field(
        "training.cutmix",
        "Share of image batches that paste a random box of another sample into each image "
        "instead of mixup (needs relabel)",
    )


_PRESET_DOC = (
    "Named set of values for every field left out: one of "
    + ", ".join(sorted(PRESETS))
    + ". Default (null): 'default'."
)


class JobSpecIn(_SpecPart):
    """A job spec without the teacher: the one-shot form's ``spec`` part."""

    student: StudentIn | None = Field(
        None, description="The student to train; omitted: the default for the teacher's input."
    )
    synthesis: SynthesisIn | None = Field(None, description="CAKE synthesis settings.")
    training: TrainingIn | None = Field(None, description="Student training settings.")
    preset: str | None = Field(
        None, description=_PRESET_DOC, json_schema_extra={"enum": [*sorted(PRESETS), None]}
    )
    eval_dataset_id: str | None = Field(
        None,
        description=(
            "A data set from POST /v1/datasets used only to report teacher and student "
            "accuracy; its input shape must equal the teacher's."
        ),
        examples=["ds_01J0000000000000000000000"],
    )
    seed: int | None = _spec_field("seed", "Random seed; the same seed reproduces the job")
    metadata: dict[str, Any] | None = Field(
        None,
        description="Free-form JSON object stored with the job and returned as is (16 KiB max).",
        examples=[{"pipeline": "nightly"}],
    )
    callback_url: str | None = Field(
        None,
        max_length=MAX_URL_LENGTH,
        description=(
            "When the job ends (succeeded, failed or canceled), POST the job object here, "
            "signed with the tenant's webhook secret (header Cake-Signature, see GET "
            "/v1/webhooks/secret); retried with backoff until a 2xx. An http(s) URL of at "
            "most 2048 characters, without credentials or #fragment."
        ),
        examples=["https://ci.example.com/hooks/cake"],
    )

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_callback_url(value)
        except CallbackURLError as exc:
            raise ValueError(str(exc)) from None


class JobCreate(JobSpecIn):
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
            "succeeded; student.width_reason says where the width came from."
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
    name: str = Field(..., description="student.pt, manifest.json, samples.png, …")
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
