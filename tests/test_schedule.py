"""Tests for cake_core.schedule: the step size (noise level) across synthesis mini-batches."""

from __future__ import annotations

import itertools
import math

import pytest

from cake_core.schedule import step_size, step_sizes

SCHEDULES = ("linear", "cosine")
# (start, decay): the reference's (0.1, 4), the "default" preset's 0.05, and odd values.
ENDS = [(0.1, 4.0), (0.05, 4.0), (0.05, 3.0), (1e-3, 2.0), (0.3, 1.5), (0.07, 4.0)]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("start", "decay"), ENDS)
def test_end_points_are_exact(schedule: str, start: float, decay: float) -> None:
    """First mini-batch: ``start``; last: ``start / 10**decay``, exactly, as documented."""
    total = 7
    assert step_size(0, total, start, decay, schedule) == start
    assert step_size(total - 1, total, start, decay, schedule) == start / 10**decay


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(("start", "decay"), ENDS)
def test_end_points_close(schedule: str, start: float, decay: float) -> None:
    values = step_sizes(11, start, decay, schedule)
    assert values[0] == pytest.approx(start, rel=1e-12)
    assert values[-1] == pytest.approx(start / 10**decay, rel=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_strictly_decreasing(schedule: str) -> None:
    values = step_sizes(50, 0.1, 4.0, schedule)
    assert len(values) == 50
    assert all(a > b for a, b in itertools.pairwise(values))
    assert all(v > 0 for v in values)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_no_decay_is_constant(schedule: str) -> None:
    values = step_sizes(9, 0.02, 0.0, schedule)
    assert values == pytest.approx([0.02] * 9, rel=1e-12)


def test_linear_is_log_linear() -> None:
    """Midpoint = geometric mean of the ends; log10 steps are equal."""
    start, decay, total = 0.1, 4.0, 9
    values = step_sizes(total, start, decay, "linear")
    end = start / 10**decay
    assert values[4] == pytest.approx(math.sqrt(start * end), rel=1e-12)
    assert values[4] == pytest.approx(1e-3, rel=1e-12)
    logs = [math.log10(v) for v in values]
    diffs = [b - a for a, b in itertools.pairwise(logs)]
    assert diffs == pytest.approx([-decay / (total - 1)] * (total - 1), rel=1e-9)


def test_cosine_midpoint_and_quarter() -> None:
    """Cosine in the exponent: half way it is also the geometric mean; at a quarter the
    exponent has fallen by ``decay * (1 - cos(pi/4)) / 2``, less than the linear quarter."""
    start, decay, total = 0.1, 4.0, 9
    values = step_sizes(total, start, decay, "cosine")
    assert values[4] == pytest.approx(1e-3, rel=1e-12)
    quarter_magnitude = -1.0 - decay * 0.5 * (1.0 - math.cos(math.pi * 0.25))
    assert values[2] == pytest.approx(10**quarter_magnitude, rel=1e-12)
    linear = step_sizes(total, start, decay, "linear")
    # cosine decays slower at the start and faster at the end than log-linear
    assert values[2] > linear[2]
    assert values[6] < linear[6]


def test_single_mini_batch_gets_start() -> None:
    for schedule in SCHEDULES:
        assert step_size(0, 1, 0.1, 4.0, schedule) == pytest.approx(0.1, rel=1e-12)
        assert step_sizes(1, 0.1, 4.0, schedule) == pytest.approx([0.1], rel=1e-12)


@pytest.mark.parametrize(("index", "total"), [(-1, 5), (5, 5), (6, 5), (0, 0)])
def test_bad_index_raises(index: int, total: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        step_size(index, total, 0.1, 4.0, "linear")


@pytest.mark.parametrize("schedule", ["exponential", "", "Linear"])
def test_unknown_schedule_raises(schedule: str) -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        step_size(0, 5, 0.1, 4.0, schedule)
    with pytest.raises(ValueError, match="unknown schedule"):
        step_sizes(5, 0.1, 4.0, schedule)
