"""Caps on a job's total work (sample-steps, training samples, synthetic bytes).

Each field of a spec is within its own range, yet their product can still be a job of months;
the service refuses such a job when it is created. This is a separate concern from the spec's
per-field validation (:func:`cake_core.config.resolve_spec`) and only the service applies it,
so it lives in its own module. No torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cake_core.errors import SpecError
from cake_core.spec import JobSpec


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
