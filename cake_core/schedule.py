"""Step-size (noise) schedule across synthesis mini-batches.

In CAKE the step size on the inputs is the noise level: early mini-batches take large steps and
scatter widely, late ones take small steps and settle close to the boundary. The schedule
interpolates the *order of magnitude* from ``log10(start)`` down by ``decay_magnitude``.
"""

from __future__ import annotations

import math


def step_size(index: int, total: int, start: float, decay_magnitude: float, schedule: str) -> float:
    """Step size of mini-batch ``index`` out of ``total``.

    The first mini-batch gets ``start`` and the last exactly ``start / 10**decay_magnitude``
    (the reference's ``t / T`` stops one step short of that; ``t / (T - 1)`` hits both ends).
    """
    if not 0 <= index < total:
        raise ValueError(f"index {index} outside 0..{total - 1}")
    fraction = index / (total - 1) if total > 1 else 0.0
    if schedule == "linear":
        shape = fraction
    elif schedule == "cosine":
        shape = 0.5 * (1.0 - math.cos(math.pi * fraction))
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    # Dividing ``start`` (rather than taking 10**log10(start)) keeps both ends exact.
    return start / 10.0 ** (shape * decay_magnitude)


def step_sizes(total: int, start: float, decay_magnitude: float, schedule: str) -> list[float]:
    return [step_size(i, total, start, decay_magnitude, schedule) for i in range(total)]
