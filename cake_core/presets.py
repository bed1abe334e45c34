"""Job presets: named sets of spec values, and the measurements that chose them.

A preset holds only the fields it changes from the spec's dataclass defaults (the reference
values); :func:`cake_core.config.resolve_spec` lays the user's values on top of it. The values
and the reasons behind them live here, apart from the field declarations (``cake_core.spec``),
because they change with benchmark results while the declarations do not. This module imports
nothing from the engine, so the spec can name the presets in its documentation.
"""

from __future__ import annotations

from typing import Any

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
# - Training images stretched (contrast x1..3 about their mean) and clipped to the job's
#   input_range (training.range_contrast 3), only when the user gives input_range and only for
#   image teachers without BatchNorm. Over 3 seeds of `fast` x3 gained 9.8 points on the digits
#   ViT, 1.5 on the digits CNN, 1.2 on the pixel MLP and 1.0 on Fashion-MNIST LeNet-5, more than
#   x2 on each and as much as x5; with `default` (seed 0) +1.2 to +3.0 on the four. On the
#   BatchNorm ResNets the clip cost 6 and 14 points in a training probe, hence their exclusion
#   (cake_core.pipeline).
# - `fast` starts image samples as pink noise (synthesis.prior "pink": amplitude ~ 1/frequency,
#   unit variance) instead of white noise. In the Fourier parameterization Adam moves fine detail
#   least, so the late mini-batches, whose step size has decayed to a tenth, kept their starting
#   white noise to the end (the teacher put them in their class anyway). Over 3 seeds of `fast`
#   it gained on every zoo image teacher or held (digits CNN +1.6, ViT +2.9, Fashion-MNIST
#   LeNet-5 +0.7, digits ResNet-BN +0.7, pixel MLP 0) and, over 2 seeds, 5.2 points on the
#   Fashion-MNIST ResNet-BN (+11.6, -1.1): small gains, none lost on the mean (bench/README.md).
#   `default` keeps white noise until it is measured there.
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
    "range_contrast": 3.0,
    "adversarial": 0.3,
    "holdout_fraction": 0.05,
}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "synthesis": {**_BEYOND_REFERENCE_SYNTHESIS, "num_samples": 12800, "steps": 300},
        "training": {"epochs": 60, **_BEYOND_REFERENCE_TRAINING},
    },
    "fast": {
        "synthesis": {**_BEYOND_REFERENCE_SYNTHESIS, "num_samples": 3200, "prior": "pink"},
        "training": {"epochs": 60, **_BEYOND_REFERENCE_TRAINING},
    },
    "reference": {},
}
DEFAULT_PRESET = "default"
"""The preset of a spec that names none."""


def presets() -> list[str]:
    """The preset names, sorted."""
    return sorted(PRESETS)
