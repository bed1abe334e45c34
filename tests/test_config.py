"""Tests for cake_core.config: resolving and validating job specs."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

import pytest

from cake_core.config import (
    LIMITS,
    PRESETS,
    WIDTH_GIVEN,
    WIDTH_PENDING,
    JobSpec,
    LossWeights,
    StudentSpec,
    SynthesisSpec,
    TrainingSpec,
    WorkLimitError,
    WorkLimits,
    check_work,
    job_work,
    presets,
    resolve_spec,
)
from cake_core.errors import SpecError


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _field_error(data: dict[str, Any], num_classes: int | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        resolve_spec(data, num_classes=num_classes)
    assert info.value.code == "validation_error"
    assert str(info.value).startswith(f"{info.value.field}: ")
    return info.value


# --------------------------------------------------------------------------------------------
# defaults and presets
# --------------------------------------------------------------------------------------------


def test_presets_listed() -> None:
    assert presets() == sorted(PRESETS)
    assert {"fast", "default", "reference"} <= set(presets())


def test_resolve_fills_every_field() -> None:
    spec = resolve_spec({})
    assert isinstance(spec, JobSpec)
    assert isinstance(spec.student, StudentSpec)
    assert isinstance(spec.synthesis, SynthesisSpec)
    assert isinstance(spec.synthesis.weights, LossWeights)
    assert isinstance(spec.training, TrainingSpec)
    flat = _flatten(spec.to_dict())
    expected_keys = set(_flatten(asdict(JobSpec())))
    assert set(flat) == expected_keys
    assert spec.preset == "default"
    # every field the preset does not set keeps the dataclass default
    preset_flat = _flatten(PRESETS["default"])
    defaults_flat = _flatten(asdict(JobSpec()))
    for key, value in flat.items():
        if key == "preset":
            continue
        assert value == preset_flat.get(key, defaults_flat[key]), key


def test_none_and_empty_mean_default_preset() -> None:
    assert resolve_spec(None) == resolve_spec({}) == resolve_spec({"preset": None})
    assert resolve_spec({}) == resolve_spec({"preset": "default"})


def test_reference_preset_is_the_paper() -> None:
    """The reference values from docs/CAKE.md."""
    spec = resolve_spec({"preset": "reference"})
    syn = spec.synthesis
    assert spec.preset == "reference"
    assert (syn.num_samples, syn.batch_size, syn.groups, syn.steps) == (25600, 100, 10, 500)
    assert syn.optimizer == "sgd"
    assert syn.noise == 0.1
    assert syn.noise_decay_magnitude == 4.0
    assert syn.noise_schedule == "linear"
    assert syn.langevin is False
    assert syn.prior == "normal"
    assert syn.soft_labels is True
    assert asdict(syn.weights) == {"cls": 1e3, "contr": 1e1, "tv": 1e5, "entropy": 0.0, "bn": 0.0}
    assert syn.augment is False
    tr = spec.training
    assert (tr.optimizer, tr.schedule, tr.lr, tr.weight_decay) == ("sgd", "onecycle", 0.1, 5e-4)
    assert tr.holdout_fraction == 0.01
    assert tr.relabel is False
    assert tr.mixup == 0.0
    assert tr.cutmix == 0.0
    assert tr.range_contrast == 1.0
    assert tr.input_noise == 0.0
    # the reference preset is the dataclass defaults
    assert spec == JobSpec(preset="reference")


def test_default_and_fast_presets_differ_as_documented() -> None:
    default = resolve_spec({"preset": "default"})
    fast = resolve_spec({"preset": "fast"})
    reference = resolve_spec({"preset": "reference"})
    for spec in (default, fast):
        # Adam on the inputs (scale-free) with a 1-decade decay, a lighter TV term, the
        # BatchNorm prior, and online relabelling
        assert spec.synthesis.optimizer == "adam"
        assert spec.synthesis.noise == 0.1
        assert spec.synthesis.noise_decay_magnitude == 1.0
        assert (spec.synthesis.weights.tv, spec.synthesis.weights.bn) == (1e4, 1e5)
        assert spec.synthesis.weights.cls == reference.synthesis.weights.cls
        assert spec.synthesis.parameterization == "fourier"
        assert reference.synthesis.parameterization == "pixel"
        assert spec.training.relabel is True
        assert spec.training.mixup == 1.0  # tables; images take CutMix instead
        assert spec.training.cutmix == 1.0
        assert spec.training.range_contrast == 3.0  # only with input_range given
        assert spec.training.input_noise == 0.0
        assert spec.training.adversarial == 0.3
        assert spec.training.holdout_fraction == 0.05
    # fast makes fewer samples with fewer steps
    assert fast.synthesis.num_samples == 3200 < default.synthesis.num_samples
    assert fast.synthesis.steps == 200 < default.synthesis.steps
    # fast starts images as pink noise; default keeps white noise until measured with it
    assert (fast.synthesis.prior, default.synthesis.prior) == ("pink", "normal")
    assert default != fast != reference != default


@pytest.mark.parametrize("name", ["fast", "default", "reference"])
def test_presets_apply_their_values(name: str) -> None:
    flat = _flatten(resolve_spec({"preset": name}).to_dict())
    for key, value in _flatten(PRESETS[name]).items():
        assert flat[key] == value, key


def test_user_values_override_preset() -> None:
    spec = resolve_spec(
        {
            "preset": "fast",
            "synthesis": {"steps": 7, "optimizer": "sgd", "weights": {"tv": 0.0}},
            "training": {"relabel": False},
            "seed": 42,
        }
    )
    assert spec.preset == "fast"
    assert spec.synthesis.steps == 7
    assert spec.synthesis.optimizer == "sgd"
    assert spec.synthesis.weights.tv == 0.0
    assert spec.training.relabel is False
    assert spec.seed == 42
    # preset values the user did not touch stay, including siblings of nested overrides
    assert spec.synthesis.num_samples == 3200
    assert spec.synthesis.noise == 0.1
    assert spec.synthesis.weights.bn == 1e5
    assert spec.synthesis.weights.cls == 1e3
    assert spec.training.mixup == 1.0


def test_resolve_does_not_mutate_input_or_presets() -> None:
    data = {"preset": "fast", "synthesis": {"weights": {"cls": 5.0}}}
    snapshot = json.dumps(data, sort_keys=True)
    presets_snapshot = json.dumps(PRESETS, sort_keys=True)
    spec = resolve_spec(data, num_classes=3)
    spec.synthesis.weights.tv = 1.0
    assert json.dumps(data, sort_keys=True) == snapshot
    assert json.dumps(PRESETS, sort_keys=True) == presets_snapshot
    assert resolve_spec({"preset": "fast"}).synthesis.weights.tv == 1e4


def test_ints_accepted_for_floats_and_integral_floats_for_ints() -> None:
    spec = resolve_spec({"synthesis": {"noise": 1, "steps": 20.0}, "training": {"lr": 1}})
    assert spec.synthesis.noise == 1.0 and isinstance(spec.synthesis.noise, float)
    assert spec.synthesis.steps == 20 and isinstance(spec.synthesis.steps, int)
    assert isinstance(spec.training.lr, float)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"synthesis": {"stepz": 3}}, "synthesis.stepz"),
        ({"training": {"epoch": 3}}, "training.epoch"),
        ({"student": {"depth": 3}}, "student.depth"),
        ({"synthesis": {"weights": {"kl": 1.0}}}, "synthesis.weights.kl"),
    ],
)
def test_unknown_fields_named(data: dict[str, Any], field: str) -> None:
    err = _field_error(data)
    assert err.field == field
    assert "unknown field" in str(err)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"synthesis": {"steps": "100"}}, "synthesis.steps"),
        ({"synthesis": {"steps": True}}, "synthesis.steps"),
        ({"synthesis": {"steps": 10.5}}, "synthesis.steps"),
        ({"synthesis": {"steps": float("nan")}}, "synthesis.steps"),
        ({"synthesis": {"steps": float("inf")}}, "synthesis.steps"),
        ({"synthesis": {"steps": None}}, "synthesis.steps"),
        ({"seed": False}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"synthesis": {"noise": "0.1"}}, "synthesis.noise"),
        ({"synthesis": {"noise": True}}, "synthesis.noise"),
        ({"synthesis": {"noise": float("nan")}}, "synthesis.noise"),
        ({"synthesis": {"noise": float("inf")}}, "synthesis.noise"),
        ({"synthesis": {"weights": {"cls": float("-inf")}}}, "synthesis.weights.cls"),
        ({"training": {"lr": [0.1]}}, "training.lr"),
        ({"synthesis": {"langevin": 1}}, "synthesis.langevin"),
        ({"synthesis": {"soft_labels": "yes"}}, "synthesis.soft_labels"),
        ({"synthesis": {"optimizer": 3}}, "synthesis.optimizer"),
        ({"student": {"arch": 3}}, "student.arch"),
        ({"synthesis": 5}, "synthesis"),
        ({"synthesis": {"weights": [1, 2]}}, "synthesis.weights"),
    ],
)
def test_wrong_types_named(data: dict[str, Any], field: str) -> None:
    assert _field_error(data).field == field


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_said_so(value: float) -> None:
    err = _field_error({"training": {"lr": value}})
    assert err.field == "training.lr"
    assert "finite" in err.reason


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"synthesis": {"steps": 0}}, "synthesis.steps"),
        ({"synthesis": {"noise": 0.0}}, "synthesis.noise"),
        ({"synthesis": {"noise": 11.0}}, "synthesis.noise"),
        ({"synthesis": {"noise_decay_magnitude": -1.0}}, "synthesis.noise_decay_magnitude"),
        ({"synthesis": {"groups": 0}}, "synthesis.groups"),
        ({"synthesis": {"batch_size": 1, "groups": 1}}, "synthesis.batch_size"),
        ({"synthesis": {"num_samples": 0}}, "synthesis.num_samples"),
        ({"synthesis": {"chunk_batches": -1}}, "synthesis.chunk_batches"),
        ({"synthesis": {"weights": {"tv": -1.0}}}, "synthesis.weights.tv"),
        ({"training": {"holdout_fraction": 0.6}}, "training.holdout_fraction"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"temperature": 0.0}}, "training.temperature"),
        ({"student": {"width": 100.0}}, "student.width"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
    ],
)
def test_out_of_range_named(data: dict[str, Any], field: str) -> None:
    err = _field_error(data)
    assert err.field == field
    assert "between" in str(err)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"synthesis": {"optimizer": "rmsprop"}}, "synthesis.optimizer"),
        ({"synthesis": {"noise_schedule": "step"}}, "synthesis.noise_schedule"),
        ({"synthesis": {"prior": "laplace"}}, "synthesis.prior"),
        ({"training": {"optimizer": "adam"}}, "training.optimizer"),
        ({"training": {"schedule": "linear"}}, "training.schedule"),
    ],
)
def test_choices_validated(data: dict[str, Any], field: str) -> None:
    err = _field_error(data)
    assert err.field == field
    assert "must be one of" in str(err)


@pytest.mark.parametrize("preset", ["turbo", "Default", 3, ["fast"]])
def test_unknown_preset(preset: Any) -> None:
    err = _field_error({"preset": preset})
    assert err.field == "preset"
    assert "fast" in err.reason


def test_valid_choices_accepted() -> None:
    spec = resolve_spec(
        {
            "synthesis": {"optimizer": "sgd", "noise_schedule": "cosine", "prior": "uniform"},
            "training": {"optimizer": "adamw", "schedule": "cosine"},
            "student": {"arch": "mlp", "width": 1.0},
        }
    )
    assert spec.synthesis.noise_schedule == "cosine"
    assert spec.synthesis.prior == "uniform"
    assert spec.training.optimizer == "adamw"
    assert spec.student.arch == "mlp"


# --------------------------------------------------------------------------------------------
# groups and batch size against the class count
# --------------------------------------------------------------------------------------------


def test_explicit_groups_above_classes_is_error() -> None:
    err = _field_error({"synthesis": {"groups": 10}}, num_classes=3)
    assert err.field == "synthesis.groups"
    assert "3" in err.reason


def test_explicit_groups_equal_to_classes_ok() -> None:
    spec = resolve_spec({"synthesis": {"groups": 5, "batch_size": 50}}, num_classes=5)
    assert (spec.synthesis.groups, spec.synthesis.batch_size) == (5, 50)


@pytest.mark.parametrize(("classes", "batch"), [(3, 99), (7, 98), (4, 100), (10, 100), (1, 100)])
def test_unspecified_groups_shrink_to_classes(classes: int, batch: int) -> None:
    spec = resolve_spec({}, num_classes=classes)
    assert spec.synthesis.groups == min(10, classes)
    assert spec.synthesis.batch_size == batch
    assert spec.synthesis.batch_size % spec.synthesis.groups == 0


def test_unspecified_groups_kept_with_many_classes() -> None:
    spec = resolve_spec({}, num_classes=100)
    assert (spec.synthesis.groups, spec.synthesis.batch_size) == (10, 100)


def test_user_batch_kept_when_groups_shrink() -> None:
    spec = resolve_spec({"synthesis": {"batch_size": 60}}, num_classes=3)
    assert (spec.synthesis.groups, spec.synthesis.batch_size) == (3, 60)


def test_batch_not_multiple_of_groups_is_error() -> None:
    err = _field_error({"synthesis": {"batch_size": 25, "groups": 10}})
    assert err.field == "synthesis.batch_size"
    assert "multiple" in err.reason


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([1.0, -1.0], "low < high"),
        ([0.5, 0.5], "low < high"),
        ([0.0], "at least 2"),
        ([0.0, 1.0, 2.0], "at most 2"),
        ([0.0, float("inf")], "finite"),
        ([0.0, "1"], "number"),
        ("-1,1", "list"),
    ],
)
def test_bad_input_range_named(value: Any, words: str) -> None:
    err = _field_error({"input_range": value})
    assert err.field.startswith("input_range") and words in err.reason, err


def test_input_range_is_optional_and_kept_as_floats() -> None:
    assert resolve_spec({}).input_range is None
    spec = resolve_spec({"input_range": [0, 1]})
    assert spec.input_range == [0.0, 1.0]
    assert resolve_spec(spec.to_dict()).input_range == [0.0, 1.0]


def test_num_samples_below_batch_is_error() -> None:
    err = _field_error({"synthesis": {"num_samples": 50, "batch_size": 100}})
    assert err.field == "synthesis.num_samples"


# --------------------------------------------------------------------------------------------
# student width: explicit, or chosen from the teacher's size when the job runs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["fast", "default", "reference"])
@pytest.mark.parametrize("student", [None, {}, {"arch": "mlp"}, {"width": None}])
def test_no_width_is_left_to_the_budget_and_says_so(preset: str, student: Any) -> None:
    data: dict[str, Any] = {"preset": preset}
    if student is not None:
        data["student"] = student
    spec = resolve_spec(data, num_classes=3)
    assert spec.student.width is None
    assert spec.student.width_reason == WIDTH_PENDING
    assert "half the teacher's parameters" in WIDTH_PENDING
    assert StudentSpec().width is None and StudentSpec().width_reason == WIDTH_PENDING


@pytest.mark.parametrize("width", [0.0625, 0.5, 1, 8])
def test_explicit_width_is_kept_as_given(width: float) -> None:
    spec = resolve_spec({"student": {"width": width}})
    assert spec.student.width == width and isinstance(spec.student.width, float)
    assert spec.student.width_reason == WIDTH_GIVEN == StudentSpec(width=width).width_reason


@pytest.mark.parametrize("width", [None, 0.25])
def test_width_reason_is_output_only(width: float | None) -> None:
    """A reason sent in (or kept from an earlier resolution) is replaced by the real one."""
    spec = resolve_spec({"student": {"width": width, "width_reason": "because I said so"}})
    assert spec.student.width_reason == (WIDTH_PENDING if width is None else WIDTH_GIVEN)
    assert _field_error({"student": {"width_reason": 3}}).field == "student.width_reason"


@pytest.mark.parametrize(
    ("width", "words"),
    [("0.5", "expected a number"), (True, "expected a number"), (float("nan"), "finite"),
     (0.01, "between 0.0625 and 8"), (8.5, "between 0.0625 and 8")],
)  # fmt: skip
def test_bad_explicit_width_named(width: Any, words: str) -> None:
    err = _field_error({"student": {"width": width}})
    assert err.field == "student.width" and words in err.reason


def test_a_chosen_width_round_trips_as_explicit() -> None:
    """A resolved spec with the chosen width (a manifest's) reruns with that width."""
    spec = resolve_spec({})
    spec.student.width, spec.student.width_reason = 0.15625, "no width given: ... chosen"
    again = resolve_spec(json.loads(json.dumps(spec.to_dict())))
    assert again.student.width == 0.15625 and again.student.width_reason == WIDTH_GIVEN


# --------------------------------------------------------------------------------------------
# round trip
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["fast", "default", "reference"])
@pytest.mark.parametrize("num_classes", [None, 3, 10])
def test_to_dict_round_trips(preset: str, num_classes: int | None) -> None:
    spec = resolve_spec(
        {"preset": preset, "synthesis": {"weights": {"entropy": 2.0}}, "seed": 9},
        num_classes=num_classes,
    )
    data = spec.to_dict()
    assert resolve_spec(data) == spec
    assert resolve_spec(data, num_classes=num_classes) == spec
    # JSON, as the manifest and the REST API store it
    assert resolve_spec(json.loads(json.dumps(data))) == spec
    # to_dict is a deep copy, not a view
    data["synthesis"]["steps"] = 1
    assert spec.synthesis.steps != 1


def test_every_dataclass_field_is_limited_or_chosen() -> None:
    """Every numeric field goes through a range check: out-of-range values cannot slip in."""
    numeric = {
        key
        for key, value in _flatten(asdict(JobSpec())).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    for key in sorted(numeric):
        section, _, name = key.rpartition(".")
        huge: Any = 1e300 if name not in ("seed",) else 2**64
        data: dict[str, Any] = {}
        cursor = data
        for part in section.split(".") if section else []:
            cursor = cursor.setdefault(part, {})
        cursor[name] = huge
        assert _field_error(data).field == key
    assert len(fields(JobSpec)) == 6


# --------------------------------------------------------------------------------------------
# absurd values and total work
# --------------------------------------------------------------------------------------------


def _nest(path: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    node = data
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


@pytest.mark.parametrize("path", sorted(LIMITS))
def test_every_limited_field_refuses_absurd_values(path: str) -> None:
    """Below the range, far above it, a huge integer, a string, NaN and Infinity: each is an
    error naming the field, never an exception of another kind (10**400 once overflowed the
    message formatting)."""
    low, high = LIMITS[path]
    for value in (low - 1, high * 10 + 1, 10**400, -(10**400), "1", float("nan"), float("inf")):
        err = _field_error(_nest(path, value))
        assert err.field == path, (value, err)


def test_huge_integer_is_named_in_the_message() -> None:
    err = _field_error({"synthesis": {"steps": 10**400}})
    assert "(401 digits)" in err.reason


def test_job_work_counts_the_products() -> None:
    spec = resolve_spec({"preset": "fast", "synthesis": {"snapshots": 2}})
    work = job_work(spec, (1, 8, 8))
    assert work == {
        "synthesis_steps": 3200 * 200,
        "training_samples": 3200 * 2 * 60,
        "synthetic_bytes": 3200 * 2 * 64 * 4,
    }


@pytest.mark.parametrize(
    ("limits", "fields", "setting"),
    [
        (
            WorkLimits(synthesis_steps=640_000 - 1),
            ("synthesis.num_samples", "synthesis.steps"),
            "CAKE_MAX_JOB_SYNTHESIS_STEPS",
        ),
        (
            WorkLimits(training_samples=384_000 - 1),
            ("synthesis.num_samples", "synthesis.snapshots", "training.epochs"),
            "CAKE_MAX_JOB_TRAINING_SAMPLES",
        ),
        (
            WorkLimits(synthetic_bytes=1_638_400 - 1),
            ("synthesis.num_samples", "synthesis.snapshots"),
            "CAKE_MAX_JOB_SYNTHETIC_BYTES",
        ),
    ],
)
def test_work_limits_name_the_fields_and_the_setting(
    limits: WorkLimits, fields: tuple[str, ...], setting: str
) -> None:
    spec = resolve_spec({"preset": "fast", "synthesis": {"snapshots": 2}})
    check_work(spec, (1, 8, 8), WorkLimits())  # no caps: anything goes
    check_work(spec, (1, 8, 8), WorkLimits(10**9, 10**9, 1 << 30))
    with pytest.raises(WorkLimitError) as info:
        check_work(spec, (1, 8, 8), limits)
    err = info.value
    assert err.fields == fields and err.field == fields[0] and err.setting == setting
    assert setting in err.message and all(f in err.message for f in fields)
    assert err.code == "validation_error"
