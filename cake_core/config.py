"""Job spec: plain dataclasses, validated with errors that name the field.

The spec is what a user sends (CLI ``--spec`` or the REST API) and what the manifest records.
``resolve_spec`` turns a partial dict into a complete, validated :class:`JobSpec`: preset values
first, then the user's values on top, so the stored spec always has every default filled in.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal

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


@dataclass
class StudentSpec:
    """Which student to build. ``arch`` None means "the default for the teacher's input rank".

    ``width`` None means "chosen from a parameter budget once the teacher is known": the largest
    width whose student has at most half the teacher's parameters (never below the smallest
    accepted width; see ``cake_core.students.choose_width``). An explicit width is used as given.
    ``width_reason`` says where the width came from; it is output only: :func:`resolve_spec`
    ignores a value given on input, and the pipeline sets it when it chooses the width.
    """

    arch: str | None = None
    width: float | None = None
    width_reason: str | None = None

    def __post_init__(self) -> None:
        if self.width_reason is None:
            self.width_reason = WIDTH_PENDING if self.width is None else WIDTH_GIVEN


@dataclass
class LossWeights:
    """Weights of the synthesis loss terms (reference: cls 1e3, contr 1e1, tv 1e5, entropy 0).

    ``bn`` (beyond the reference, DeepInversion's prior) pulls each mini-batch's per-channel
    statistics at every BatchNorm layer of the teacher toward the layer's running statistics;
    it does nothing for a teacher without BatchNorm.
    """

    cls: float = 1e3
    contr: float = 1e1
    tv: float = 1e5
    entropy: float = 0.0
    bn: float = 0.0


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

    num_samples: int = 25600
    batch_size: int = 100
    groups: int = 10
    steps: int = 500
    weights: LossWeights = field(default_factory=LossWeights)
    noise: float = 0.1
    noise_schedule: NoiseSchedule = "linear"
    noise_decay_magnitude: float = 4.0
    langevin: bool = False
    optimizer: InputOptimizer = "sgd"
    prior: Prior = "normal"
    soft_labels: bool = True
    chunk_batches: int = 0
    snapshots: int = 1
    augment: bool = False
    parameterization: Parameterization = "pixel"


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

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    optimizer: TrainOptimizer = "sgd"
    schedule: TrainSchedule = "onecycle"
    weight_decay: float = 5e-4
    temperature: float = 1.0
    holdout_fraction: float = 0.01
    relabel: bool = False
    mixup: float = 0.0
    input_noise: float = 0.0
    adversarial: float = 0.0
    adversarial_steps: int = 1
    translate: float = 0.0
    noise_mix: float = 0.0
    cutmix: float = 0.0


@dataclass
class JobSpec:
    """Everything a distillation job needs besides the teacher itself."""

    student: StudentSpec = field(default_factory=StudentSpec)
    synthesis: SynthesisSpec = field(default_factory=SynthesisSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    preset: str | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

_LIMITS: dict[str, tuple[float, float]] = {
    "student.width": (0.0625, 8.0),
    "synthesis.num_samples": (1, 10_000_000),
    "synthesis.batch_size": (2, 100_000),
    "synthesis.groups": (1, 1000),
    "synthesis.steps": (1, 100_000),
    "synthesis.noise": (1e-12, 10.0),
    "synthesis.noise_decay_magnitude": (0.0, 12.0),
    "synthesis.chunk_batches": (0, 100_000),
    "synthesis.snapshots": (1, 100),
    "synthesis.weights.cls": (0.0, 1e12),
    "synthesis.weights.contr": (0.0, 1e12),
    "synthesis.weights.tv": (0.0, 1e12),
    "synthesis.weights.entropy": (0.0, 1e12),
    "synthesis.weights.bn": (0.0, 1e12),
    "training.epochs": (1, 10_000),
    "training.batch_size": (1, 100_000),
    "training.lr": (1e-12, 100.0),
    "training.weight_decay": (0.0, 1.0),
    "training.temperature": (1e-3, 100.0),
    "training.holdout_fraction": (0.0, 0.5),
    "training.mixup": (0.0, 100.0),
    "training.input_noise": (0.0, 100.0),
    "training.adversarial": (0.0, 100.0),
    "training.adversarial_steps": (1, 100),
    "training.translate": (0.0, 0.5),
    "training.noise_mix": (0.0, 1.0),
    "training.cutmix": (0.0, 1.0),
    "seed": (0, 2**63 - 1),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "synthesis.noise_schedule": ("linear", "cosine"),
    "synthesis.optimizer": ("sgd", "adam"),
    "synthesis.prior": ("normal", "uniform"),
    "synthesis.parameterization": ("pixel", "fourier"),
    "training.optimizer": ("sgd", "adamw"),
    "training.schedule": ("onecycle", "cosine"),
}


LIMITS = _LIMITS
"""Inclusive (low, high) of every numeric field, by dotted path (public: the API documents them)."""
CHOICES = _CHOICES
"""Allowed values of every enumerated field, by dotted path."""


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``data``, type-checking each field; unknown keys are errors."""
    if not isinstance(data, dict):
        raise SpecError(path or "spec", f"expected an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            where = f"{path}.{key}" if path else key
            raise SpecError(where, f"unknown field; known fields: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for name in known:
        if name not in data:
            continue
        where = f"{path}.{name}" if path else name
        default = getattr(cls(), name)
        values[name] = _coerce(default, data[name], where)
    return cls(**values)


def _coerce(default: Any, value: Any, where: str) -> Any:
    if is_dataclass(default):
        return _build(type(default), value, where)
    if where == "student.width" and (default is None or value is None):
        return None if value is None else _coerce(0.0, value, where)  # None: from the budget
    if where in ("student.arch", "student.width_reason", "preset"):
        if value is not None and not isinstance(value, str):
            raise SpecError(where, "expected a string or null")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(where, "expected true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(where, "expected an integer")
        if isinstance(value, float) and not value.is_integer():
            raise SpecError(where, f"expected an integer, got {value}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(where, "expected a number")
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float's range (JSON allows any digits)
            raise SpecError(where, f"must be a finite number, got {_num(value)}") from None
        if not math.isfinite(number):
            raise SpecError(where, "must be a finite number")
        return number
    if isinstance(default, str):
        if not isinstance(value, str):
            raise SpecError(where, "expected a string")
        return value
    return value


def _check_ranges(spec: JobSpec) -> None:
    flat = _flatten(spec.to_dict())
    for key, (low, high) in _LIMITS.items():
        value = flat[key]
        if value is None:  # student.width: chosen from the budget when the job runs
            continue
        if not low <= value <= high:
            raise SpecError(key, f"must be between {low:g} and {high:g}, got {_num(value)}")
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise SpecError(key, f"must be one of {', '.join(choices)}; got {flat[key]!r}")
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


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


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
    """
    data = dict(data or {})
    preset_name = data.get("preset")
    if preset_name is None:
        preset_name = "default"
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise SpecError("preset", f"unknown preset {preset_name!r}; choose one of {presets()}")
    user_groups = isinstance(data.get("synthesis"), dict) and "groups" in data["synthesis"]
    user_batch = isinstance(data.get("synthesis"), dict) and "batch_size" in data["synthesis"]
    merged = _deep_merge(PRESETS[preset_name], data)
    merged["preset"] = preset_name
    spec = _build(JobSpec, merged, "")
    spec.student.width_reason = WIDTH_PENDING if spec.student.width is None else WIDTH_GIVEN
    if num_classes is not None:
        _fit_groups(spec, num_classes, user_groups=user_groups, user_batch=user_batch)
    _check_ranges(spec)
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
