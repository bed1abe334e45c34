"""The torch side of the API: runs only in child processes, never in the API process.

``check_teacher_file`` and ``architecture_catalogue`` are what ``api.sandbox`` runs in a child
(forked from a server that already imported torch, so a check costs ~0.1 s instead of a 2 s
torch import). ``report`` sends progress stages to the parent, so a timeout can say whether the
model hung while loading or on the probe batch.

Also usable by hand, for debugging a rejected upload the way the service sees it::

    python -m api.teacher_check teacher.pt '[1,28,28]' [num_classes]

prints the JSON result (the TeacherInfo fields, or ``{"code", "message"}``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

Report = Callable[[str], None]

# Example shapes for the catalogue's parameter counts, one per input rank.
_EXAMPLE_INPUTS: dict[int, tuple[list[int], int]] = {
    1: ([64], 10),
    2: ([16, 32], 10),
    3: ([3, 32, 32], 10),
}


def _no_report(_stage: str) -> None:
    return None


def check_teacher_file(
    path: str,
    input_shape: Sequence[int],
    num_classes: int | None = None,
    report: Report = _no_report,
) -> dict[str, Any]:
    """Load and probe a teacher; the result is JSON-ready.

    ``{"ok": True, "input_shape", "num_classes", "parameters"}`` or ``{"ok": False, "code",
    "message"[, "field"]}``. The upload's sha256 and size were computed by the API while
    streaming, so the file is not hashed again here (500 MB would cost seconds).
    """
    import torch

    from cake_core.errors import SpecError, TeacherInvalidError
    from cake_core.shapes import parse_input_shape
    from cake_core.teacher import check_teacher, load_teacher

    torch.set_num_threads(1)  # the probe is tiny; leave the cores to the API and workers
    try:
        shape = parse_input_shape(list(input_shape))
        report("loading")
        module = load_teacher(path, "cpu")
        report("probing")
        classes = check_teacher(module, shape, expected_num_classes=num_classes)
        parameters = sum(p.numel() for p in module.parameters())
    except SpecError as exc:
        return {"ok": False, "code": "validation_error", "field": exc.field, "message": exc.reason}
    except TeacherInvalidError as exc:
        return {"ok": False, "code": "teacher_invalid", "message": exc.message}
    except MemoryError:
        return {"ok": False, "code": "teacher_invalid", "message": "__memory__"}
    return {
        "ok": True,
        "input_shape": list(shape),
        "num_classes": int(classes),
        "parameters": int(parameters),
    }


def architecture_catalogue(report: Report = _no_report) -> list[dict[str, Any]]:
    """Every registered student architecture with example parameter counts (needs torch)."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m api.teacher_check PATH SHAPE_JSON [NUM_CLASSES]``; exit 0 iff valid."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: python -m api.teacher_check PATH SHAPE_JSON [NUM_CLASSES]", file=sys.stderr)
        return 2
    try:
        shape = json.loads(args[1])
    except json.JSONDecodeError:
        shape = [int(d) for d in args[1].strip("()[] ").split(",") if d.strip()]
    if isinstance(shape, int):
        shape = [shape]
    classes = int(args[2]) if len(args) == 3 else None
    result = check_teacher_file(args[0], shape, classes)
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
