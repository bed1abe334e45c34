"""The student architecture catalogue, computed once in a child process and cached.

Parameter counts need torch (the students are built on the meta device), which the API process
must not import; the registry is static code, so one computation per process is enough. It
serves GET /v1/architectures only: a job's ``student.arch`` is checked by the engine's torch-free
rule (``cake_core.architectures``), with no child process.
"""

from __future__ import annotations

import threading
from typing import Any

from api import sandbox
from api.errors import ApiError

_TIMEOUT_S = 180.0
_lock = threading.Lock()
_items: list[dict[str, Any]] | None = None


def architectures() -> list[dict[str, Any]]:
    """The catalogue (cached); blocking on first use, so call it from a thread.

    Raises ApiError 503 ``not_ready`` when the child fails; the failure is not cached.
    """
    global _items
    with _lock:
        if _items is None:
            result = sandbox.run("api.teacher_check:architecture_catalogue", timeout_s=_TIMEOUT_S)
            if result.outcome != "ok" or not isinstance(result.value, list):
                raise ApiError(
                    503,
                    "not_ready",
                    "the architecture catalogue could not be computed; try again",
                    headers={"Retry-After": "10"},
                )
            _items = result.value
        return _items
