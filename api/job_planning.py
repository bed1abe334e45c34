"""Checking a job request before anything is written: spec, work caps, student, eval data set,
metadata size, callback URL, MLflow tracking URI.

Separate from the writes (``api.crud.jobs``) because the one-shot form plans the job against the
uploaded teacher's facts *before* the teacher is stored, so a bad spec leaves nothing behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from api import schemas
from api.crud.datasets import get_job_dataset
from api.deps import AppContext
from api.errors import ApiError, spec_error, validation_error
from api.teacher_check import TeacherFacts
from cake_core.architectures import student_arch
from cake_core.config import (
    JobSpec,
    WorkLimitError,
    WorkLimits,
    check_work,
    resolve_spec,
    spec_fields,
)
from cake_core.errors import SpecError
from cake_shared.mlflow_spec import MlflowURIError, check_mlflow_uri
from cake_shared.models import Teacher
from cake_shared.settings import Settings
from cake_shared.webhooks import CallbackURLError, check_callback_url

MAX_METADATA_BYTES = 16 * 1024


@dataclass
class JobPlan:
    """A validated job, ready to insert."""

    spec: dict[str, Any]
    eval_dataset_id: str | None
    metadata: dict[str, Any]
    callback_url: str | None = None


_ENGINE_FIELDS = frozenset(f.name for f in spec_fields(JobSpec))
"""The job body's fields that are the engine's spec (the rest are the service's own)."""


def plan_job(
    session: Session,
    tenant: str,
    teacher: Teacher | TeacherFacts,
    body: schemas.JobSpecIn,
    loc: list[str | int],
    settings: Settings | None = None,
) -> JobPlan:
    """Resolve and check a job spec against its teacher (and eval data set).

    ``loc`` prefixes error locations (``["body"]`` for JSON, ``["body", "spec"]`` for the
    one-shot form). With ``settings``, the job's total work is checked against the
    ``CAKE_MAX_JOB_*`` caps. Raises ApiError 422/404 naming the field(s).
    """
    spec_dict = body.model_dump(exclude_none=True, include=_ENGINE_FIELDS)
    try:
        spec = resolve_spec(spec_dict, num_classes=teacher.num_classes)
    except SpecError as exc:
        raise spec_error(exc, loc) from None

    shape = list(teacher.input_shape)
    if settings is not None:
        _check_work(spec, shape, settings, loc)
    try:  # the engine's own check (torch-free), so the worker never meets a student it refuses
        spec.student.arch = student_arch(spec.student.arch, shape)
    except SpecError as exc:
        raise validation_error([*loc, *exc.field.split(".")], exc.reason) from None

    metadata = body.metadata or {}
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise validation_error([*loc, "metadata"], "must be at most 16 KiB of JSON")
    stored = spec.to_dict()
    if body.mlflow_tracking_uri is not None:  # kept beside the engine's spec (worker.mlflow_log)
        stored["mlflow_tracking_uri"] = check_mlflow(
            settings, tenant, body.mlflow_tracking_uri, [*loc, "mlflow_tracking_uri"]
        )

    if body.eval_dataset_id is not None:
        dataset = get_job_dataset(session, tenant, body.eval_dataset_id, [*loc, "eval_dataset_id"])
        if list(dataset.input_shape) != shape:
            raise ApiError(
                422,
                "dataset_invalid",
                f"data set {dataset.id} has input shape {list(dataset.input_shape)} but the "
                f"teacher takes {shape}",
            )
        if dataset.num_classes > teacher.num_classes:
            raise ApiError(
                422,
                "dataset_invalid",
                f"data set {dataset.id} has labels up to {dataset.num_classes - 1} but the "
                f"teacher has {teacher.num_classes} classes (0..{teacher.num_classes - 1})",
            )
    return JobPlan(
        spec=stored,
        eval_dataset_id=body.eval_dataset_id,
        metadata=metadata,
        callback_url=body.callback_url,
    )


def check_callback(ctx: AppContext, url: str | None, loc: list[str | int]) -> None:
    """422 for a callback the deployment will not call (``webhook_allow_private`` off and the
    host resolves to an internal address); the syntax was checked by the request model."""
    if url is None:
        return
    try:
        check_callback_url(url, ctx.settings)
    except CallbackURLError as exc:
        raise validation_error(loc, str(exc)) from None


def check_mlflow(settings: Settings | None, tenant: str, url: str, loc: list[str | int]) -> str:
    """422 unless ``tenant`` may name its own MLflow server (``CAKE_MLFLOW_SPEC_TENANTS``) at
    an address this deployment dials (:mod:`cake_shared.mlflow_spec`); the syntax was checked
    by the request model. Without settings nobody may."""
    if settings is None:
        raise validation_error(loc, "this service takes no MLflow tracking URI in a job spec")
    try:
        return check_mlflow_uri(url, tenant, settings)
    except MlflowURIError as exc:
        raise validation_error(loc, str(exc)) from None


def _check_work(spec: JobSpec, shape: list[int], settings: Settings, loc: list[str | int]) -> None:
    """422 naming every field of a product that exceeds a ``CAKE_MAX_JOB_*`` cap."""
    limits = WorkLimits(
        synthesis_steps=settings.max_job_synthesis_steps,
        training_samples=settings.max_job_training_samples,
        synthetic_bytes=settings.max_job_synthetic_bytes,
    )
    try:
        check_work(spec, shape, limits)
    except WorkLimitError as exc:
        errors = [{"loc": [*loc, *f.split(".")], "msg": exc.message} for f in exc.fields]
        raise ApiError(422, "validation_error", exc.message, errors=errors) from None
