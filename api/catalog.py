"""The student architecture catalogue, computed once in a child process and cached.

Parameter counts need torch (the students are built on the meta device), which the API process
must not import; the registry is static code, so one computation per process is enough. It
serves GET /v1/architectures only: a job's ``student.arch`` is checked by the engine's torch-free
rule (``cake_core.architectures``), with no child process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from api import sandbox

_EXAMPLE_INPUTS: dict[int, tuple[list[int], int]] = {
    1: ([64], 10),
    2: ([16, 32], 10),
    3: ([3, 32, 32], 10),
}
"""Example inputs per input rank whose parameter counts the catalogue shows."""
_TIMEOUT_S = 180.0
_lock = threading.Lock()
_items: list[dict[str, Any]] | None = None

sandbox.preload("cake_core.students", "api.catalog")


def architectures() -> list[dict[str, Any]]:
    """The catalogue (cached); blocking on first use, so call it from a thread.

    Raises ApiError 503 ``not_ready`` when the child fails; the failure is not cached.
    """
    from api.errors import ApiError  # here: the fork server preloads this module (FastAPI
    # in every child would eat into the teacher check's tight memory cap)

    global _items
    with _lock:
        if _items is None:
            result = sandbox.run("api.catalog:architecture_catalogue", timeout_s=_TIMEOUT_S)
            if result.outcome != "ok" or not isinstance(result.value, list):
                raise ApiError(
                    503,
                    "not_ready",
                    "the architecture catalogue could not be computed; try again",
                    headers={"Retry-After": "10"},
                )
            _items = result.value
        return _items


def architecture_catalogue(report: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every registered student architecture with example parameter counts (needs torch).

    Run only by :func:`api.sandbox.run`, which always passes ``report``."""
    from cake_core.architectures import DEFAULT_FOR_RANK
    from cake_core.config import LIMITS, StudentSpec
    from cake_core.students import list_archs

    report("computing")
    width_min, width_max = LIMITS["student.width"]
    out: list[dict[str, Any]] = []
    for arch in list_archs():
        counts = []
        for rank in arch.input_ranks:
            if rank not in _EXAMPLE_INPUTS:
                continue
            shape, classes = _EXAMPLE_INPUTS[rank]
            for width in (1.0, 0.5):
                counts.append(
                    {
                        "input_shape": shape,
                        "num_classes": classes,
                        "width": width,
                        "parameters": int(arch.parameter_count(shape, classes, width)),
                    }
                )
        out.append(
            {
                "name": arch.name,
                "object": "architecture",
                "description": arch.description,
                "input_ranks": list(arch.input_ranks),
                "default_for_ranks": sorted(
                    r for r, name in DEFAULT_FOR_RANK.items() if name == arch.name
                ),
                "width": {
                    "default": StudentSpec().width,  # None: chosen from the teacher's size
                    "min": float(width_min),
                    "max": float(width_max),
                },
                "parameters": counts,
            }
        )
    return out
