"""The student's metrics table, one definition for ``cake distill`` and the remote commands.

A local run (:mod:`cake_cli.main`) and a job of the service (``cake submit --wait``, ``cake jobs
show``/``wait``) report the same metrics; one function keeps their digits and titles alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

#: Metrics that are fractions or ratios, shown with four decimals.
_FINE_SUFFIXES = ("accuracy", "agreement_synthetic", "agreement_eval", "ratio", "estimate")


def format_metric(key: str, value: Any) -> str:
    """One metric's cell: fractions to 4 decimals, counts with separators, others to 2.

    A value that is not a number (a newer service may send one) is shown as it came.
    """
    if not isinstance(value, int | float):
        return str(value)
    if key.endswith(_FINE_SUFFIXES):
        return f"{value:.4f}"
    if key.endswith("parameters") or key == "num_samples":
        return f"{int(value):,}"
    return f"{value:.2f}"


def metrics_table(metrics: Mapping[str, Any], arch: str, width: float | None = None) -> Table:
    """A ``metric | value`` table titled ``student: <arch> (width <w>)``."""
    title = f"student: {arch}"
    if width is not None:
        title += f" (width {width:g})"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, format_metric(key, value))
    return table
