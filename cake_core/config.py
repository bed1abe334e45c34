"""Job spec: resolving a user's partial spec into a complete, validated one.

The spec is what a user sends (CLI ``--spec`` or the REST API) and what the manifest records.
:func:`resolve_spec` turns a partial dict into a complete, validated :class:`JobSpec`: preset
values first, then the user's values on top, so the stored spec always has every default filled
in. It validates with pydantic from the declarations and raises
:class:`~cake_core.errors.SpecError` naming the field, for the CLI, the worker and the bench.

This is also the spec's public entry point: every name of the spec's modules is importable from
here, each defined in the module of its one job:

* :mod:`cake_core.spec`: each field declared once (type, default, range, documentation);
* :mod:`cake_core.presets`: the named presets and why they hold what they hold;
* :mod:`cake_core.spec_schema`: the declarations read back (:func:`spec_fields`, :data:`LIMITS`,
  :data:`CHOICES`) and pydantic's errors in the engine's words;
* :mod:`cake_core.work_limits`: caps on a job's total work, applied by the service.

This module imports no torch: the API process uses it.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from cake_core.errors import SpecError
from cake_core.presets import DEFAULT_PRESET, PRESETS, presets
from cake_core.spec import (
    MAX_WIDTH,
    MIN_WIDTH,
    WIDTH_GIVEN,
    WIDTH_PENDING,
    Bool,
    DefaultNote,
    Float,
    InputOptimizer,
    Int,
    JobSpec,
    LossWeights,
    NoiseSchedule,
    Parameterization,
    Prior,
    Str,
    StudentSpec,
    SynthesisSpec,
    TrainingSpec,
    TrainOptimizer,
    TrainSchedule,
)
from cake_core.spec_schema import CHOICES, LIMITS, SpecField, spec_fields, validate
from cake_core.work_limits import WorkLimitError, WorkLimits, check_work, job_work

__all__ = [
    "CHOICES",
    "DEFAULT_PRESET",
    "LIMITS",
    "MAX_WIDTH",
    "MIN_WIDTH",
    "PRESETS",
    "WIDTH_GIVEN",
    "WIDTH_PENDING",
    "Bool",
    "DefaultNote",
    "Float",
    "InputOptimizer",
    "Int",
    "JobSpec",
    "LossWeights",
    "NoiseSchedule",
    "Parameterization",
    "Prior",
    "SpecField",
    "Str",
    "StudentSpec",
    "SynthesisSpec",
    "TrainOptimizer",
    "TrainSchedule",
    "TrainingSpec",
    "WorkLimitError",
    "WorkLimits",
    "check_work",
    "job_work",
    "presets",
    "resolve_spec",
    "spec_fields",
]


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_cross_field(spec: JobSpec) -> None:
    """The rules that tie fields together (each field's own range was checked on input)."""
    syn = spec.synthesis
    if syn.batch_size % syn.groups:
        raise SpecError(
            "synthesis.batch_size",
            f"must be a multiple of synthesis.groups ({syn.groups}) so every row of the "
            f"mini-batch holds {syn.groups} distinct classes; got {syn.batch_size} "
            f"(groups defaults to at most the teacher's class count; set both to choose)",
        )
    if syn.snapshots > syn.steps:
        raise SpecError(
            "synthesis.snapshots",
            f"must not exceed synthesis.steps ({syn.steps}); got {syn.snapshots}",
        )
    if spec.input_range is not None:
        low, high = spec.input_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise SpecError(
                "input_range",
                f"must be [low, high] with finite low < high; got {list(spec.input_range)}",
            )
    if syn.num_samples < syn.batch_size:
        raise SpecError(
            "synthesis.num_samples",
            f"must be at least synthesis.batch_size ({syn.batch_size}); got {syn.num_samples}",
        )


def resolve_spec(
    data: dict[str, Any] | None = None,
    *,
    num_classes: int | None = None,
) -> JobSpec:
    """Complete and validate a (partial) spec dict.

    ``preset`` (default ``"default"``) supplies values for every field the user left out. With
    ``num_classes`` known, ``groups`` left unspecified becomes ``min(groups, num_classes)`` (and
    the batch size is rounded down to a multiple of it), while an explicit ``groups`` above the
    class count is an error. ``student.width`` left out stays None (the pipeline chooses it from
    the teacher's size) and ``student.width_reason`` says so.

    Raises:
        SpecError: naming the first field that is unknown, of the wrong type, out of its
            declared range or in conflict with another.
    """
    data = dict(data or {})
    preset_name = data.get("preset")
    if preset_name is None:
        preset_name = DEFAULT_PRESET
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise SpecError("preset", f"unknown preset {preset_name!r}; choose one of {presets()}")
    user_groups = isinstance(data.get("synthesis"), dict) and "groups" in data["synthesis"]
    user_batch = isinstance(data.get("synthesis"), dict) and "batch_size" in data["synthesis"]
    merged = _deep_merge(PRESETS[preset_name], data)
    merged["preset"] = preset_name
    spec = validate(merged)
    spec.student.width_reason = WIDTH_PENDING if spec.student.width is None else WIDTH_GIVEN
    if num_classes is not None:
        _fit_groups(spec, num_classes, user_groups=user_groups, user_batch=user_batch)
    _check_cross_field(spec)
    return spec


def _fit_groups(spec: JobSpec, num_classes: int, *, user_groups: bool, user_batch: bool) -> None:
    syn = spec.synthesis
    if syn.groups > num_classes:
        if user_groups:
            raise SpecError(
                "synthesis.groups",
                f"must not exceed the teacher's number of classes ({num_classes}); "
                f"got {syn.groups}",
            )
        syn.groups = num_classes
        if not user_batch:
            syn.batch_size = max(syn.groups, syn.batch_size - syn.batch_size % syn.groups)
