"""The check of an uploaded teacher, both sides of the sandbox, in one place.

The engine decides what a usable teacher is (:func:`cake_core.teacher.probe_teacher`: the file
checks, the loading and the probe batch); this module runs that rule for the service, where the
file is untrusted and the API process must not import torch:

* :func:`check_teacher` (API process, no torch) runs :func:`check_teacher_file` in a sandboxed
  child (:func:`api.sandbox.run`, with the settings' time and memory caps) and turns whatever
  came back, a result, a hang, a crash or the memory cap, into :class:`TeacherFacts` or the
  API's error;
* :func:`check_teacher_file` (the child) runs the engine's rule and answers with a JSON-ready
  dict; it reports the stages ``loading`` and ``probing``, so a timeout can say whether the model
  hung while loading or on the probe batch;

Both sides live together so that the child's answers and the parent's reading of them (codes,
the probe batch; the stage names are the engine's) are written once. The fork server preloads
this module and the engine (:func:`api.sandbox.preload`), so a check starts in ~0.1 s instead of
a 2 s torch import. Every child inherits what the server imported, so this module's top-level
imports stay light: torch only inside the child's functions, FastAPI only inside
:func:`check_teacher` (in the children it would eat into a tight memory cap, down to leaving no
memory to answer with).

Also usable by hand, for debugging a rejected upload the way the service sees it::

    python -m api.teacher_check teacher.pt '[1,28,28]' [num_classes]

prints the JSON result (the TeacherFacts fields, or ``{"code", "message"}``).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api import sandbox
from api.sizes import format_bytes
from cake_core.shapes import PROBE_BATCH, format_shape

if TYPE_CHECKING:
    from cake_shared.settings import Settings

log = logging.getLogger("cake.api")

Report = Callable[[str], None]

_MEMORY_MARKERS = ("bad_alloc", "can't allocate memory", "out of memory")
_CHECK_SLOTS = threading.BoundedSemaphore(2)
"""At most two checks at once: each child may use up to the memory cap."""
_WARNED_NETWORK = threading.Event()

# Example shapes for the catalogue's parameter counts, one per input rank.
# Named, not __name__: under ``python -m`` this module is ``__main__``.
sandbox.preload("cake_core.teacher", "cake_core.students", "api.teacher_check")


# --------------------------------------------------------------------------------------------
# the parent side (API process)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherFacts:
    """What the check learned about an upload; the API computed its sha256 and size itself."""

    input_shape: list[int]
    num_classes: int
    parameters: int


def check_teacher(
    path: Path,
    input_shape: list[int],
    num_classes: int | None,
    settings: Settings,
    shape_loc: list[str | int],
) -> TeacherFacts:
    """Run the engine's teacher check in a sandboxed child; blocking (call from a thread).

    Raises ApiError: 422 ``teacher_invalid`` with what is wrong with the file (including a hang,
    a crash or the memory cap), 422 ``validation_error`` for an out-of-range input shape, 503
    ``not_ready`` when the check could not even start.
    """
    from api.errors import ApiError, validation_error  # here: see the module docstring

    timeout = settings.teacher_check_timeout_s
    with _CHECK_SLOTS:
        result = sandbox.run(
            "api.teacher_check:check_teacher_file",
            str(path),
            list(input_shape),
            num_classes,
            PROBE_BATCH,
            timeout_s=timeout,
            memory_bytes=settings.teacher_check_memory_bytes,
            env=settings.child_env(),
        )
    if result.network_isolated is False and not _WARNED_NETWORK.is_set():
        _WARNED_NETWORK.set()
        log.warning(
            "the teacher check runs without network isolation: this kernel refused a new "
            "network namespace (TorchScript has no socket operations, so this is defence in "
            "depth only)"
        )
    probe = format_shape([PROBE_BATCH, *input_shape])
    doing = {
        "loading": "loading the model",
        "probing": f"running a probe batch of shape {probe}",
    }.get(result.stage or "", "starting the check")
    memory_cap = bool(settings.teacher_check_memory_bytes)
    memory = format_bytes(settings.teacher_check_memory_bytes)
    if result.outcome == "timeout":
        if result.stage == "probing":
            msg = (
                f"the teacher did not answer within {timeout:g} s on a probe batch of shape "
                f"{probe}: forward() must return promptly on the CPU (does it loop forever?)"
            )
        elif result.stage == "loading":
            msg = f"the teacher could not be loaded within {timeout:g} s"
        else:
            raise ApiError(
                503,
                "not_ready",
                f"the teacher check did not start within {timeout:g} s; try again",
                headers={"Retry-After": "10"},
            )
        raise ApiError(422, "teacher_invalid", msg)
    if result.outcome == "crashed" and result.stage is None:
        # The child died before it opened the file: the sandbox is broken, not the teacher.
        log.error("teacher check sandbox failed to start: %r", result)
        raise ApiError(
            503,
            "not_ready",
            "the teacher check could not run on the server; try again",
            headers={"Retry-After": "10"},
        )
    if result.outcome == "crashed":
        sig = sandbox.signal_name(result.exitcode)
        if sig == "SIGXCPU":
            msg = (
                f"the teacher used more than {sandbox.cpu_limit(timeout)} s of CPU time while "
                f"{doing}: forward() must return promptly on the CPU (does it loop forever?)"
            )
        elif result.value == "memory" or sig == "SIGKILL" or (sig == "SIGABRT" and memory_cap):
            # Under the address-space cap a failed C++ allocation (std::bad_alloc with no
            # handler) aborts the child before it can answer: that is the cap, not the file.
            msg = f"the teacher needs more than {memory} of memory while {doing}"
        elif sig:
            msg = f"the teacher check crashed ({sig}) while {doing}: the file or model is broken"
        else:
            msg = f"the teacher could not be checked while {doing} ({result.value or 'no answer'})"
        raise ApiError(422, "teacher_invalid", msg)
    value: dict[str, Any] = result.value
    if not value.get("ok"):
        if value.get("code") == "validation_error":
            raise validation_error(shape_loc, str(value.get("message")))
        message = str(value.get("message"))
        if any(m in message for m in _MEMORY_MARKERS):
            message = f"the teacher needs more than {memory} of memory while {doing}"
        raise ApiError(422, "teacher_invalid", message)
    return TeacherFacts(
        input_shape=[int(d) for d in value["input_shape"]],
        num_classes=int(value["num_classes"]),
        parameters=int(value["parameters"]),
    )


# --------------------------------------------------------------------------------------------
# the child side (run by api.sandbox; imports torch)
# --------------------------------------------------------------------------------------------


def _no_report(_stage: str) -> None:
    return None


def check_teacher_file(
    path: str,
    input_shape: str | Sequence[int],
    num_classes: int | None = None,
    probe_batch: int = PROBE_BATCH,
    report: Report = _no_report,
) -> dict[str, Any]:
    """Load and probe a teacher with the engine's rule; the result is JSON-ready.

    ``{"ok": True, "input_shape", "num_classes", "parameters"}`` or ``{"ok": False, "code",
    "message"[, "field"]}``. Running out of memory is not caught here: the sandbox reports it
    as such, whatever raised it. The upload's sha256 and size were computed by the API while
    streaming, so the file is not hashed again here (500 MB would cost seconds).
    """
    import torch

    from cake_core.errors import SpecError, TeacherInvalidError
    from cake_core.teacher import probe_teacher

    torch.set_num_threads(1)  # the probe is tiny; leave the cores to the API and workers
    try:
        probed = probe_teacher(
            path,
            input_shape,
            device="cpu",
            expected_num_classes=num_classes,
            probe_batch=probe_batch,
            report=report,
        )
    except SpecError as exc:
        return {"ok": False, "code": "validation_error", "field": exc.field, "message": exc.reason}
    except TeacherInvalidError as exc:
        return {"ok": False, "code": "teacher_invalid", "message": exc.message}
    return {
        "ok": True,
        "input_shape": list(probed.input_shape),
        "num_classes": probed.num_classes,
        "parameters": probed.parameters,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m api.teacher_check PATH SHAPE [NUM_CLASSES]``; exit 0 iff valid.

    ``SHAPE`` is read by the engine's shape parser (``[1,28,28]``, ``1,28,28``, ``13``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: python -m api.teacher_check PATH SHAPE_JSON [NUM_CLASSES]", file=sys.stderr)
        return 2
    classes = int(args[2]) if len(args) == 3 else None
    result = check_teacher_file(args[0], args[1], classes)
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
