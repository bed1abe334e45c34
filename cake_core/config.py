"""Job spec: the one definition of its fields, defaults, ranges, choices and presets.

The spec is what a user sends (CLI ``--spec`` or the REST API) and what the manifest records.
Each field is declared once, below: its type, its default (the dataclass default, the
reference value), its range and its documentation (a pydantic ``Field`` in the annotation).
Everything else is read from here:

* :func:`resolve_spec` validates with pydantic from these declarations and turns its errors into
  :class:`~cake_core.errors.SpecError` naming the field, for the CLI, the worker and the bench;
* the REST API builds its request models (``api.schemas``) from :func:`spec_fields`, so
  ``/openapi.json`` documents exactly these ranges and defaults and the API refuses what the
  engine would refuse;
* :data:`LIMITS` and :data:`CHOICES` are derived tables of the same ranges and choices.

The classes stay plain dataclasses, so the engine and the tests can build one directly (with
any values) without validation; only :func:`resolve_spec` checks. ``resolve_spec`` turns a
partial dict into a complete, validated :class:`JobSpec`: preset values first, then the user's
values on top, so the stored spec always has every default filled in. This module imports no
torch: the API process uses it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from cake_core.errors import SpecError

NoiseSchedule = Literal["linear", "cosine"]
InputOptimizer = Literal["sgd", "adam"]
Prior = Literal["normal", "uniform"]
Parameterization = Literal["pixel", "fourier"]
TrainOptimizer = Literal["sgd", "adamw"]
TrainSchedule = Literal["onecycle", "cosine"]


WIDTH_GIVEN = "given in the spec"
"""``student.width_reason`` of an explicit width."""
WIDTH_PENDING = (
    "no width given: chosen when the job runs, as the largest width whose student has at most "
    "half the teacher's parameters"
)
"""``student.width_reason`` of a width left to the budget, before the teacher is measured."""

MIN_WIDTH = 0.0625
"""Smallest ``student.width`` a spec accepts (also the lower bound of a width chosen for it)."""
MAX_WIDTH = 8.0
"""Largest ``student.width`` a spec accepts."""


def _integral_float(value: Any) -> Any:
    """``20.0`` -> ``20``: a JSON writer may write an integer field as a float; other values
    pass unchanged, so ``10.5`` is still an error that names the field."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Strict scalars: "100" is not a number and true is not 1. Only the scalars are strict (a
# strict dataclass would also refuse the dict a nested section arrives as). Integer fields
# take integral floats (see _integral_float), number fields take integers.
Int = Annotated[int, Strict(), BeforeValidator(_integral_float)]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


@dataclass(frozen=True)
class DefaultNote:
    """Annotation metadata: how to document a default that is not just the value (a width
    chosen from the teacher's size, groups lowered to its class count)."""

    text: str


# The spec's own validation config: unknown fields are errors, NaN and Infinity are refused.
_SPEC_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


# Presets hold only the fields they change from the dataclass defaults (the reference values).
# They are chosen on the whole fidelity zoo (bench/zoo.py, bench/fidelity.py: CNNs with and
# without BatchNorm, a ViT, MLPs; 8x8 and 28x28 images, tables), never on one teacher:
# - Adam on the inputs is scale-free, so a step size means the same distance per input element
#   whatever the input size, where plain SGD with the reference step sizes diverges on small
#   inputs (CAKE.md, "Note on scale"). With Adam a sample travels at most steps x step size, so
#   the decay spans one order of magnitude, not four: with more, the last mini-batches stayed
#   near their Gaussian start and the teacher put a third of them in another class.
# - The TV weight is 1e4, not 1e5: at 1e5 the TV term was ~90 % of the loss and images stayed
#   flat blobs off target; below 1e4 Fashion-MNIST students lost 9 points (noisier samples).
# - The BatchNorm prior (weight 1e5; it is an average over layers) took a BatchNorm ResNet's
#   student from 0.61 to 0.86 of the teacher; teachers without BatchNorm ignore it.
# - The training options beyond the reference are on because they measurably help
#   (bench/quality.py and bench/fidelity.py have a row for each). 5 % of the samples are held
#   out so the fidelity estimate rests on a few hundred samples, not a few dozen.
# - No input noise in training: noise of 0.3 helped the pixel MLP's student by 7 points, but cost
#   the ViT's 16 and the Fashion-MNIST BatchNorm ResNet's 13; that teacher answers noised inputs
#   unlike clean ones, and its student reached 0.52 of it even on real training inputs (0.94
#   without the noise).
# - The Fourier parameterization (cake_core/spectral.py): Adam moves each image's spectrum scaled
#   by 1/frequency, so samples grow coarse shapes before pixel detail. Over 3 seeds of `fast` it
#   gained 4 points on Fashion-MNIST LeNet-5 (the poster's row; every seed) and stayed within 2
#   points either way, inside the seed spread, on every other teacher; non-image inputs keep
#   pixels.
# - CutMix in place of mixup for images (training.cutmix 1.0): each training image gets a random
#   box of another, and the teacher labels the result. Over 3 seeds of `fast` it gained 14.5
#   points on the ViT (every seed), 7 on the Fashion-MNIST ResNet-BN, 6 on the pixel MLP (every
#   seed), 2 on the digits CNN and 1 on Fashion-MNIST LeNet-5, and cost the digits ResNet-BN 1
#   (inside its seed spread; bench/README.md). Tables keep mixup.
_BEYOND_REFERENCE_SYNTHESIS: dict[str, Any] = {
    "steps": 200,
    "parameterization": "fourier",
    "optimizer": "adam",
    "noise": 0.1,
    "noise_decay_magnitude": 1.0,
    "weights": {"tv": 1e4, "bn": 1e5},
}
_BEYOND_REFERENCE_TRAINING = {
    "relabel": True,
    "mixup": 1.0,
    "cutmix": 1.0,
    "adversarial": 0.3,
    "holdout_fraction": 0.05,
}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "synthesis": {**_BEYOND_REFERENCE_SYNTHESIS, "num_samples": 12800, "steps": 300},
        "training": {"epochs": 60, **_BEYOND_REFERENCE_TRAINING},
    },
    "fast": {
        "synthesis": {**_BEYOND_REFERENCE_SYNTHESIS, "num_samples": 3200},
        "training": {"epochs": 60, **_BEYOND_REFERENCE_TRAINING},
    },
    "reference": {},
}
DEFAULT_PRESET = "default"
"""The preset of a spec that names none."""


# --------------------------------------------------------------------------------------------
# the spec
# --------------------------------------------------------------------------------------------


@with_config(_SPEC_CONFIG)
@dataclass
class StudentSpec:
    """Which student to build. ``arch`` None means "the default for the teacher's input rank".

    ``width`` None means "chosen from a parameter budget once the teacher is known": the largest
    width whose student has at most half the teacher's parameters (never below the smallest
    accepted width; see ``cake_core.students.choose_width``). An explicit width is used as given.
    ``width_reason`` says where the width came from; it is output only: :func:`resolve_spec`
    ignores a value given on input, and the pipeline sets it when it chooses the width.
    """

    arch: Annotated[
        Str | None,
        Field(
            description=(
                "Student architecture, one of GET /v1/architectures (mlp, lenet5, resnet18, "
                "vit). Default: lenet5 for a [C, H, W] teacher input, else mlp."
            )
        ),
    ] = None
    width: Annotated[
        Float | None,
        Field(
            ge=MIN_WIDTH,
            le=MAX_WIDTH,
            description=(
                "Scales channels and hidden units; 0.5 is the 'Half' variant, 1 the reference "
                "size. Omitted or null: chosen when the job runs, as the largest width "
                "(0.0625..1 in steps of 1/32) whose student has at most half the teacher's "
                "parameters (the smallest when none does); the job's spec then records the "
                "width and, in student.width_reason, why. An explicit width is used as given "
                "(a warning event when the student is larger than the teacher)"
            ),
        ),
        DefaultNote("null (chosen from the teacher's size)"),
    ] = None
    width_reason: Annotated[
        Str | None,
        Field(
            max_length=2000,
            description=(
                "Output only: where the job's width came from ('given in the spec', or how it "
                "was chosen from the teacher's size). Accepted so a job's spec can be sent "
                "again as is; ignored on input."
            ),
        ),
    ] = None

    def __post_init__(self) -> None:
        if self.width_reason is None:
            self.width_reason = WIDTH_PENDING if self.width is None else WIDTH_GIVEN


_WEIGHT = Field(ge=0.0, le=1e12)


@with_config(_SPEC_CONFIG)
@dataclass
class LossWeights:
    """Weights of the synthesis loss terms (reference: cls 1e3, contr 1e1, tv 1e5, entropy 0).

    ``bn`` (beyond the reference, DeepInversion's prior) pulls each mini-batch's per-channel
    statistics at every BatchNorm layer of the teacher toward the layer's running statistics;
    it does nothing for a teacher without BatchNorm.
    """

    cls: Annotated[Float, _WEIGHT, Field(description="Weight of the classification loss")] = 1e3
    contr: Annotated[
        Float, _WEIGHT, Field(description="Weight of the contrastive loss between groups")
    ] = 1e1
    tv: Annotated[Float, _WEIGHT, Field(description="Weight of the total-variation prior")] = 1e5
    entropy: Annotated[Float, _WEIGHT, Field(description="Weight of the entropy term")] = 0.0
    bn: Annotated[
        Float,
        _WEIGHT,
        Field(
            description=(
                "Weight of the BatchNorm-statistics prior (teachers with BatchNorm layers only)"
            )
        ),
    ] = 0.0


@with_config(_SPEC_CONFIG)
@dataclass
class SynthesisSpec:
    """CAKE synthesis: ``num_samples`` inputs in mini-batches of ``batch_size``, ``steps`` each.

    ``noise`` is the step size of the first mini-batch; it decays by ``noise_decay_magnitude``
    orders of magnitude to the last one. ``chunk_batches`` is how many mini-batches run at once
    (0: chosen from the input size); it changes speed and memory, never the result's
    distribution. ``augment`` (beyond the reference) shows the teacher each image at a random
    small circular shift at every step, so samples hold features the teacher recognises wherever
    they sit rather than pixel-exact adversarial patterns. ``snapshots`` > 1 also keeps each
    sample at evenly spaced earlier steps of its trajectory (beyond the reference): samples at
    several distances from the boundary, labelled with logits the synthesis computed anyway.
    """

    num_samples: Annotated[
        Int, Field(ge=1, le=10_000_000, description="Number of synthetic inputs to create")
    ] = 25600
    batch_size: Annotated[
        Int,
        Field(
            ge=2,
            le=100_000,
            description=(
                "Synthesis mini-batch size; must be a multiple of groups (rounded down to one "
                "when groups is lowered to the class count)"
            ),
        ),
    ] = 100
    groups: Annotated[
        Int,
        Field(
            ge=1,
            le=1000,
            description="Classes per contrastive row; must not exceed the teacher's class count",
        ),
        DefaultNote("10, lowered to the teacher's class count when it has fewer"),
    ] = 10
    steps: Annotated[
        Int, Field(ge=1, le=100_000, description="Gradient steps on the inputs per mini-batch")
    ] = 500
    weights: Annotated[LossWeights, Field(description="Weights of the synthesis losses.")] = field(
        default_factory=LossWeights
    )
    noise: Annotated[
        Float, Field(ge=1e-12, le=10.0, description="Step size of the first mini-batch")
    ] = 0.1
    noise_schedule: Annotated[
        NoiseSchedule, Field(description="How the step size decays across mini-batches")
    ] = "linear"
    noise_decay_magnitude: Annotated[
        Float,
        Field(
            ge=0.0,
            le=12.0,
            description=(
                "Orders of magnitude the step size decays from the first to the last mini-batch"
            ),
        ),
    ] = 4.0
    langevin: Annotated[Bool, Field(description="Add Langevin noise after every step (LAKE)")] = (
        False
    )
    optimizer: Annotated[InputOptimizer, Field(description="Optimizer on the synthetic inputs")] = (
        "sgd"
    )
    prior: Annotated[Prior, Field(description="Distribution the synthetic inputs start from")] = (
        "normal"
    )
    soft_labels: Annotated[
        Bool, Field(description="Store the teacher's softmax (true) or its argmax (false)")
    ] = True
    chunk_batches: Annotated[
        Int,
        Field(
            ge=0,
            le=100_000,
            description="Mini-batches synthesized at once (0: automatic); speed and memory only",
        ),
    ] = 0
    snapshots: Annotated[
        Int,
        Field(
            ge=1,
            le=100,
            description=(
                "Also keep each sample at this many evenly spaced points of its trajectory; "
                "at most steps"
            ),
        ),
    ] = 1
    augment: Annotated[
        Bool, Field(description="Show the teacher randomly shifted images during synthesis")
    ] = False
    parameterization: Annotated[
        Parameterization,
        Field(
            description=(
                "What the optimizer moves: the pixels, or their 1/frequency-scaled spectrum "
                "(fourier; images only)"
            )
        ),
    ] = "pixel"


@with_config(_SPEC_CONFIG)
@dataclass
class TrainingSpec:
    """Student training on the synthetic set.

    The reference trains on stored soft labels. ``relabel`` asks the teacher again for every
    training batch, which lets ``mixup`` and ``input_noise`` augment the synthetic samples
    without the labels going stale, and ``adversarial`` move half of each batch one signed
    gradient step (of that size) toward where student and teacher disagree most. Each is
    switchable and measured in ``bench/quality``; ``adversarial_steps`` > 1 searches further
    (that many steps of that size). ``noise_mix`` replaces that share of each batch with fresh
    standard-normal noise, labelled by the teacher like the rest: the teacher's answers away
    from the synthetic samples, which on some teachers taught the student more than the
    synthetic set itself (the zoo's floor rows). ``cutmix`` is the share of image batches that
    paste a box of another sample into each image (CutMix) instead of ``mixup``'s blend.
    """

    epochs: Annotated[Int, Field(ge=1, le=10_000, description="Training epochs of the student")] = (
        30
    )
    batch_size: Annotated[Int, Field(ge=1, le=100_000, description="Training batch size")] = 128
    lr: Annotated[Float, Field(ge=1e-12, le=100.0, description="Peak learning rate")] = 0.1
    optimizer: Annotated[
        TrainOptimizer, Field(description="Student optimizer (sgd is Nesterov SGD)")
    ] = "sgd"
    schedule: Annotated[TrainSchedule, Field(description="Learning-rate schedule")] = "onecycle"
    weight_decay: Annotated[Float, Field(ge=0.0, le=1.0, description="Weight decay")] = 5e-4
    temperature: Annotated[
        Float, Field(ge=1e-3, le=100.0, description="Distillation temperature")
    ] = 1.0
    holdout_fraction: Annotated[
        Float,
        Field(
            ge=0.0,
            le=0.5,
            description="Share of synthetic samples held out to measure agreement_synthetic",
        ),
    ] = 0.01
    relabel: Annotated[
        Bool, Field(description="Ask the teacher again for every training batch")
    ] = False
    mixup: Annotated[
        Float, Field(ge=0.0, le=100.0, description="Mixup strength (needs relabel)")
    ] = 0.0
    input_noise: Annotated[
        Float,
        Field(
            ge=0.0,
            le=100.0,
            description="Gaussian noise added to training inputs (needs relabel)",
        ),
    ] = 0.0
    adversarial: Annotated[
        Float,
        Field(
            ge=0.0,
            le=100.0,
            description="Step size moving half of each batch toward teacher-student disagreement",
        ),
    ] = 0.0
    adversarial_steps: Annotated[
        Int, Field(ge=1, le=100, description="Signed-gradient steps of that search")
    ] = 1
    translate: Annotated[
        Float,
        Field(
            ge=0.0,
            le=0.5,
            description=(
                "Random shift of each training image, up to this share of its side (images; "
                "needs relabel)"
            ),
        ),
    ] = 0.0
    noise_mix: Annotated[
        Float,
        Field(
            ge=0.0,
            le=1.0,
            description=(
                "Share of each training batch replaced by fresh standard-normal noise (needs "
                "relabel)"
            ),
        ),
    ] = 0.0
    cutmix: Annotated[
        Float,
        Field(
            ge=0.0,
            le=1.0,
            description=(
                "Share of image batches that paste a random box of another sample into each "
                "image instead of mixup (needs relabel)"
            ),
        ),
    ] = 0.0


@with_config(_SPEC_CONFIG)
@dataclass
class JobSpec:
    """Everything a distillation job needs besides the teacher itself."""

    student: Annotated[
        StudentSpec,
        Field(description="The student to train; omitted: the default for the teacher's input."),
    ] = field(default_factory=StudentSpec)
    synthesis: Annotated[SynthesisSpec, Field(description="CAKE synthesis settings.")] = field(
        default_factory=SynthesisSpec
    )
    training: Annotated[TrainingSpec, Field(description="Student training settings.")] = field(
        default_factory=TrainingSpec
    )
    preset: Annotated[
        Str | None,
        Field(
            description=(
                "Named set of values for every field left out: one of "
                + ", ".join(sorted(PRESETS))
                + f". Default (null): '{DEFAULT_PRESET}'."
            ),
            json_schema_extra={"enum": [*sorted(PRESETS), None]},
        ),
    ] = None
    seed: Annotated[
        Int,
        Field(ge=0, le=2**63 - 1, description="Random seed; the same seed reproduces the job"),
    ] = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# reading the definition: fields, ranges, choices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecField:
    """One field of a spec section as declared above, for those who document or re-validate it.

    ``value_type`` is the bare value type (``int``, ``float``, ``bool``, ``str``, a ``Literal``
    or a nested section's dataclass), without None and without the engine's validators (which
    are the engine's leniencies, not the field's type). ``default`` is the reference value.
    ``info`` holds the declared range (``ge``/``le``, ``max_length``), description and schema
    extras.
    """

    name: str
    path: str
    value_type: Any
    default: Any
    info: FieldInfo
    default_note: str | None

    @property
    def section(self) -> type | None:
        """The nested section's dataclass (``synthesis.weights`` -> LossWeights), else None."""
        return self.value_type if dataclasses.is_dataclass(self.value_type) else None

    @property
    def limits(self) -> tuple[float, float] | None:
        """Inclusive (low, high) when the field declares a range."""
        low = next((m.ge for m in self.info.metadata if isinstance(m, annotated_types.Ge)), None)
        high = next((m.le for m in self.info.metadata if isinstance(m, annotated_types.Le)), None)
        return None if low is None or high is None else (low, high)

    @property
    def max_length(self) -> int | None:
        """The longest accepted text of a string field, when it declares one."""
        caps = [m.max_length for m in self.info.metadata if isinstance(m, annotated_types.MaxLen)]
        return caps[0] if caps else None

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The allowed values of an enumerated field."""
        return (
            typing.get_args(self.value_type)
            if typing.get_origin(self.value_type) is Literal
            else None
        )


def _bare(annotation: Any) -> Any:
    """``Annotated[Float | None, ...]`` -> ``float``: the value type alone."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _bare(members[0])
    return annotation


@functools.cache
def spec_fields(section: type = JobSpec, prefix: str = "") -> tuple[SpecField, ...]:
    """The declared fields of ``section`` (a spec dataclass), in declaration order."""
    hints = typing.get_type_hints(section, include_extras=True)
    out = []
    for f in dataclasses.fields(section):
        annotation = hints[f.name]
        info = FieldInfo.from_annotation(annotation)
        note = next((m.text for m in info.metadata if isinstance(m, DefaultNote)), None)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(SpecField(f.name, prefix + f.name, _bare(annotation), default, info, note))
    return tuple(out)


def _leaves(section: type = JobSpec, prefix: str = "") -> list[SpecField]:
    out: list[SpecField] = []
    for spec_field in spec_fields(section, prefix):
        if spec_field.section is not None:
            out += _leaves(spec_field.section, spec_field.path + ".")
        else:
            out.append(spec_field)
    return out


LIMITS: dict[str, tuple[float, float]] = {
    f.path: limits for f in _leaves() if (limits := f.limits) is not None
}
"""Inclusive (low, high) of every numeric field, by dotted path (read from the declarations)."""
CHOICES: dict[str, tuple[str, ...]] = {
    f.path: choices for f in _leaves() if (choices := f.choices) is not None
}
"""Allowed values of every enumerated field, by dotted path (read from the declarations)."""


# --------------------------------------------------------------------------------------------
# resolving and validating
# --------------------------------------------------------------------------------------------


@functools.cache
def _validator() -> TypeAdapter[JobSpec]:
    """Built on first use: the CLI's ``--help`` need not pay for it."""
    return TypeAdapter(JobSpec)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_RANGE = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def _section_at(path: tuple[str | int, ...]) -> type:
    """The spec dataclass that holds the field at ``path``."""
    section: type = JobSpec
    for part in path[:-1]:
        found = next((f.section for f in spec_fields(section) if f.name == part), None)
        if found is None:
            break
        section = found
    return section


def _spec_error(err: ErrorDetails) -> SpecError:
    """Pydantic's error about one field, in the engine's words (the CLI shows it verbatim)."""
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc)
    kind, value = err["type"], err.get("input")
    if kind in _UNKNOWN:
        known = ", ".join(sorted(f.name for f in spec_fields(_section_at(loc))))
        return SpecError(where, f"unknown field; known fields: {known}")
    if kind.startswith(("dataclass", "dict", "model")):
        return SpecError(where or "spec", f"expected an object, got {type(value).__name__}")
    if kind in _RANGE and where in LIMITS:
        low, high = LIMITS[where]
        return SpecError(where, f"must be between {low:g} and {high:g}, got {_num(value)}")
    if kind == "literal_error" and where in CHOICES:
        return SpecError(where, f"must be one of {', '.join(CHOICES[where])}; got {value!r}")
    if kind == "bool_type":
        return SpecError(where, "expected true or false")
    if kind.startswith("int_"):
        got = f", got {value}" if isinstance(value, float) else ""
        return SpecError(where, f"expected an integer{got}")
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        # an int beyond a float's range (JSON allows any digits)
        return SpecError(where, f"must be a finite number, got {_num(value)}")
    if kind.startswith("float_"):
        return SpecError(where, "expected a number")
    if kind == "finite_number":
        return SpecError(where, "must be a finite number")
    if kind == "string_type":
        return SpecError(where, "expected a string or null")
    return SpecError(where, err["msg"])


def _validate(data: dict[str, Any]) -> JobSpec:
    """Build the spec from ``data``; the first problem (an unknown field first) as SpecError."""
    try:
        return _validator().validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = next((e for e in errors if e["type"] in _UNKNOWN), errors[0])
        raise _spec_error(first) from None


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
    if syn.num_samples < syn.batch_size:
        raise SpecError(
            "synthesis.num_samples",
            f"must be at least synthesis.batch_size ({syn.batch_size}); got {syn.num_samples}",
        )


def _num(value: float) -> str:
    """A number for a message; ``:g`` alone overflows on integers beyond a float's range."""
    if isinstance(value, int) and abs(value) > 10**15:
        text = str(value)
        return f"{text[:8]}... ({len(text.lstrip('-'))} digits)"
    return f"{value:g}"


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
    spec = _validate(merged)
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


def presets() -> list[str]:
    return sorted(PRESETS)


# --------------------------------------------------------------------------------------------
# total work of a job
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkLimits:
    """Caps on a job's total work, beyond the per-field ranges (``None`` or 0: no cap).

    Each field is within its range, yet their product can still be a job of months (10M samples
    x 100k steps); the service sets these from ``CAKE_MAX_JOB_*`` and refuses such a job when
    it is created instead of letting it occupy a worker. The CLI runs on the user's own machine
    and applies none.
    """

    synthesis_steps: int | None = None
    """``num_samples x steps``: sample-steps of synthesis (each a teacher forward + backward)."""
    training_samples: int | None = None
    """``num_samples x snapshots x epochs``: samples the student sees over its training."""
    synthetic_bytes: int | None = None
    """``num_samples x snapshots x input elements x 4``: size of the synthetic set (float32)."""


# (attribute, fields it multiplies, unit, setting)
_WORK: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "synthesis_steps",
        ("synthesis.num_samples", "synthesis.steps"),
        "sample-steps",
        "CAKE_MAX_JOB_SYNTHESIS_STEPS",
    ),
    (
        "training_samples",
        ("synthesis.num_samples", "synthesis.snapshots", "training.epochs"),
        "training samples",
        "CAKE_MAX_JOB_TRAINING_SAMPLES",
    ),
    (
        "synthetic_bytes",
        ("synthesis.num_samples", "synthesis.snapshots"),
        "bytes of synthetic inputs",
        "CAKE_MAX_JOB_SYNTHETIC_BYTES",
    ),
)


class WorkLimitError(SpecError):
    """The job as a whole is too big; ``fields`` are the settings whose product is capped."""

    def __init__(self, fields: tuple[str, ...], message: str, setting: str) -> None:
        super().__init__(fields[0], message)
        self.message = message  # the message names every field already
        self.fields = fields
        self.setting = setting


def _qty(n: int) -> str:
    """``640,000`` for small counts, ``1e+12`` for large ones (exact digits would not help)."""
    return f"{n:,}" if n < 10**7 else f"{n:.3g}"


def job_work(spec: JobSpec, input_shape: tuple[int, ...] | list[int]) -> dict[str, int]:
    """The quantities :class:`WorkLimits` caps, for this spec and teacher input shape."""
    syn = spec.synthesis
    elements = math.prod(int(d) for d in input_shape)
    return {
        "synthesis_steps": syn.num_samples * syn.steps,
        "training_samples": syn.num_samples * syn.snapshots * spec.training.epochs,
        "synthetic_bytes": syn.num_samples * syn.snapshots * elements * 4,
    }


def check_work(spec: JobSpec, input_shape: tuple[int, ...] | list[int], limits: WorkLimits) -> None:
    """Refuse a spec whose total work exceeds ``limits``.

    Raises:
        WorkLimitError: naming the fields whose product is too large, the product, the cap and
            the setting that raises it.
    """
    work = job_work(spec, input_shape)
    for attr, names, unit, setting in _WORK:
        cap = getattr(limits, attr)
        if not cap or work[attr] <= cap:
            continue
        product = " x ".join(names)
        if attr == "synthetic_bytes":
            product += f" x {math.prod(int(d) for d in input_shape)} input elements x 4"
        raise WorkLimitError(
            names,
            f"{product} is {_qty(work[attr])} {unit}, over this server's limit of {_qty(cap)} "
            f"per job ({setting}); lower {' or '.join(names)}",
            setting,
        )
