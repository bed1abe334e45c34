"""Named student architectures, validated before anything is built.

A job spec names its student by string (``student.arch``) and a width multiplier
(``student.width``); the input shape and class count come from the teacher. This module turns
that triple into an ``nn.Module`` and turns every way it can be wrong into a :class:`SpecError`
that names the setting to fix, so the CLI and the service can show the message verbatim.
Architecture modules register themselves on import (see ``cake_core.students.__init__``). Which
names exist and which input ranks each takes is ``cake_core.architectures`` (torch-free, so the
API checks a spec by the same rule); shapes are read by ``cake_core.shapes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cake_core.architectures import INPUT_RANKS, check_arch
from cake_core.config import MAX_WIDTH, MIN_WIDTH
from cake_core.errors import SpecError
from cake_core.shapes import parse_input_shape

__all__ = [
    "DEFAULT_MAX_WIDTH",
    "MAX_WIDTH",
    "MIN_WIDTH",
    "WIDTH_STEP",
    "StudentArch",
    "WidthChoice",
    "budget_widths",
    "build_student",
    "choose_width",
    "get_arch",
    "list_archs",
    "register",
    "scaled",
]

DEFAULT_MAX_WIDTH = 1.0
"""The default student is never wider than the reference size."""
WIDTH_STEP = 1 / 32
"""Widths the default student is chosen from: MIN_WIDTH..DEFAULT_MAX_WIDTH in these steps."""

Builder = Callable[[tuple[int, ...], int, float], nn.Module]


def scaled(base: int, width: float, minimum: int = 1) -> int:
    """``base * width`` rounded half up (not Python's half-to-even), at least ``minimum``.

    Half-up keeps the published variants exact, e.g. LeNet-5-Half's 3, 8, 60, 42.
    """
    return max(minimum, math.floor(base * width + 0.5))


def _as_shape(input_shape: Sequence[int]) -> tuple[int, ...] | None:
    """The shape as a tuple of positive ints (any rank and size), or None when it is not one."""
    if isinstance(input_shape, str):  # a shape here is a sequence; text is the CLI's to parse
        return None
    try:
        return parse_input_shape(input_shape, bounded=False)
    except SpecError:
        return None


def _check_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, int | float):
        raise SpecError("student.width", f"width must be a number; got {width!r}")
    if not math.isfinite(width) or not 0 < width <= MAX_WIDTH:
        raise SpecError(
            "student.width",
            f"width must be greater than 0 and at most {MAX_WIDTH:g} "
            f"(1.0 is the reference size); got {width!r}",
        )
    return float(width)


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise SpecError(
            "student.num_classes",
            f"a classifier needs an integer number of classes >= 2; got {num_classes!r}",
        )
    return num_classes


@dataclass(frozen=True)
class StudentArch:
    """One buildable architecture: a name, what it is for, and how to build it.

    ``builder`` receives already-validated arguments. The input ranks it takes are
    ``cake_core.architectures.INPUT_RANKS[name]`` (see :attr:`input_ranks`).
    """

    name: str
    description: str
    builder: Builder

    @property
    def input_ranks(self) -> tuple[int, ...]:
        """Accepted ranks without the batch: 1 = [features], 2 = [seq, dim], 3 = [C, H, W]."""
        return INPUT_RANKS[self.name]

    def accepts(self, input_shape: Sequence[int]) -> bool:
        """Whether ``input_shape`` (no batch dim) is positive ints of an accepted rank."""
        shape = _as_shape(input_shape)
        return shape is not None and len(shape) in self.input_ranks

    def _validate(
        self, input_shape: Sequence[int], num_classes: int, width: float
    ) -> tuple[tuple[int, ...], int, float]:
        width = _check_width(width)
        num_classes = _check_num_classes(num_classes)
        shape = _as_shape(input_shape)
        if shape is None:
            got = list(input_shape) if isinstance(input_shape, Sequence) else input_shape
            raise SpecError(
                "student.arch",
                f"input shape must be a non-empty list of positive integers; got {got!r}",
            )
        check_arch(self.name, shape)
        return shape, num_classes, width

    def build(self, input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> nn.Module:
        """A freshly initialised student; raises :class:`SpecError` on invalid arguments."""
        return self.builder(*self._validate(input_shape, num_classes, width))

    def parameter_count(
        self, input_shape: Sequence[int], num_classes: int, width: float = 1.0
    ) -> int:
        """Number of parameters ``build`` would create.

        Built on the meta device: no memory for weights, and the global RNG is left untouched
        so asking for a size never changes what a seeded ``build`` produces.
        """
        args = self._validate(input_shape, num_classes, width)
        with torch.device("meta"):
            module = self.builder(*args)
        return sum(p.numel() for p in module.parameters())

    def describe(
        self,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
        width: float = 1.0,
    ) -> dict:
        """JSON-ready summary; includes ``parameters`` when shape and class count are given."""
        info: dict = {
            "name": self.name,
            "description": self.description,
            "input_ranks": list(self.input_ranks),
        }
        if input_shape is not None and num_classes is not None:
            info["parameters"] = self.parameter_count(input_shape, num_classes, width)
        return info


_REGISTRY: dict[str, StudentArch] = {}


def register(arch: StudentArch) -> StudentArch:
    """Add ``arch`` under its name; a name missing from ``cake_core.architectures`` or a second
    architecture with the same name is a bug."""
    if arch.name not in INPUT_RANKS:
        raise ValueError(
            f"student architecture {arch.name!r} has no input ranks in "
            "cake_core.architectures.INPUT_RANKS"
        )
    if arch.name in _REGISTRY:
        raise ValueError(f"student architecture {arch.name!r} is already registered")
    _REGISTRY[arch.name] = arch
    return arch


def get_arch(name: str) -> StudentArch:
    """The architecture called ``name``; unknown names list the valid choices."""
    return _REGISTRY[check_arch(name)]


def list_archs() -> list[StudentArch]:
    """All registered architectures, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def build_student(
    name: str, input_shape: Sequence[int], num_classes: int, width: float = 1.0
) -> nn.Module:
    """Shortcut for ``get_arch(name).build(input_shape, num_classes, width)``."""
    return get_arch(name).build(input_shape, num_classes, width)


@dataclass(frozen=True)
class WidthChoice:
    """The width of a student the spec gave none for, its size, and why (one sentence)."""

    width: float
    parameters: int
    budget: int
    within_budget: bool
    reason: str


def budget_widths() -> list[float]:
    """The widths the default student is chosen from, smallest first (exact binary fractions)."""
    low = round(MIN_WIDTH / WIDTH_STEP)
    high = round(DEFAULT_MAX_WIDTH / WIDTH_STEP)
    return [k * WIDTH_STEP for k in range(low, high + 1)]


def choose_width(
    name: str, input_shape: Sequence[int], num_classes: int, teacher_parameters: int
) -> WidthChoice:
    """The largest of :func:`budget_widths` whose student has at most half the teacher's
    parameters; the smallest width when even that one is over the budget (the reason says so).

    Parameter counts grow with the width (every layer size is ``scaled``, which is monotone),
    so a bisection over the ladder needs a handful of counts (on the meta device), not 31.
    """
    arch = get_arch(name)
    budget = max(0, int(teacher_parameters)) // 2
    ladder = budget_widths()

    def count(width: float) -> int:
        return arch.parameter_count(input_shape, num_classes, width)

    teacher = f"{int(teacher_parameters):,}"
    smallest = count(ladder[0])
    if smallest > budget:
        return WidthChoice(
            ladder[0],
            smallest,
            budget,
            False,
            f"no width given: even the smallest width {ladder[0]:g} gives {name} "
            f"{smallest:,} parameters, over the budget of half the teacher's {teacher} "
            f"({budget:,}); the smallest width is used",
        )
    low, high = 0, len(ladder) - 1  # ladder[low] fits; find the last one that does
    best = smallest
    top = count(ladder[high])
    if top <= budget:
        low, best = high, top
    while low < high - 1:  # ladder[low] fits, ladder[high] does not
        mid = (low + high) // 2
        params = count(ladder[mid])
        if params <= budget:
            low, best = mid, params
        else:
            high = mid
    width = ladder[low]
    if low == len(ladder) - 1:
        why = f"no width given: {width:g}, the largest width a default student gets,"
    else:
        why = (
            f"no width given: {width:g} is the largest width (of {ladder[0]:g}..{ladder[-1]:g} "
            f"in steps of 1/{round(1 / WIDTH_STEP)}) that"
        )
    return WidthChoice(
        width,
        best,
        budget,
        True,
        f"{why} keeps {name} within half the teacher's {teacher} parameters "
        f"({best:,} <= {budget:,})",
    )
