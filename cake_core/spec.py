"""Job spec declarations: every field's type, default, range and documentation, once.

The spec is what a user sends (CLI ``--spec`` or the REST API) and what the manifest records.
Each field is declared here: its type, its default (the dataclass default, the reference
value), its range and its documentation (a pydantic ``Field`` in the annotation). The classes
are plain dataclasses, so the engine and the tests can build one directly (with any values)
without validation; :func:`cake_core.config.resolve_spec` validates, and
:mod:`cake_core.spec_schema` reads the declarations back (fields, ranges, choices).

This module holds declarations only, so that the modules reading them (``spec_schema``,
``work_limits``, ``config``) import it without import cycles. It imports no torch: the API
process uses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    with_config,
)

from cake_core.presets import DEFAULT_PRESET, PRESETS

NoiseSchedule = Literal["linear", "cosine"]
InputOptimizer = Literal["sgd", "adam"]
Prior = Literal["normal", "uniform", "pink"]
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
    prior: Annotated[
        Prior,
        Field(
            description=(
                "Distribution the synthetic inputs start from: standard normal, uniform on "
                "[-1, 1], or (images) pink noise, unit-variance pixels whose spectrum falls as "
                "1/frequency like natural images' (other inputs: standard normal)"
            )
        ),
    ] = "normal"
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
    range_contrast: Annotated[
        Float,
        Field(
            ge=1.0,
            le=10.0,
            description=(
                "Above 1, and with input_range given: scale each training image about its own "
                "mean by a factor drawn from [1, this], then clip it to input_range (image "
                "teachers without BatchNorm; needs relabel)"
            ),
        ),
    ] = 1.0


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
    input_range: Annotated[
        list[Float] | None,
        Field(
            min_length=2,
            max_length=2,
            description=(
                "[low, high]: the range every value of a real input lies in, as your "
                "preprocessing makes it (e.g. [-1, 1] or [0, 1]). Optional: the teacher does not "
                "say it, and with it training.range_contrast keeps the student's training "
                "images inside it. Null: unknown"
            ),
        ),
    ] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
