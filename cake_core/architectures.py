"""Student architecture names, the input ranks each takes, and the default student per rank.

The one place a job's ``student.arch`` is checked against its teacher's input shape. It is
torch-free, so the API runs the same check in its own process (which never imports torch) when
a job is created, and the engine runs it again when the job starts; the student registry
(``cake_core.students``) registers a builder under each of these names and reads each one's
ranks from here.
"""

from __future__ import annotations

from collections.abc import Sequence

from cake_core.errors import SpecError

__all__ = [
    "DEFAULT_FOR_RANK",
    "INPUT_RANKS",
    "RANK_LAYOUTS",
    "check_arch",
    "default_arch",
    "names",
    "student_arch",
]

INPUT_RANKS: dict[str, tuple[int, ...]] = {
    "lenet5": (3,),
    "mlp": (1, 2, 3),
    "resnet18": (3,),
    "vit": (2, 3),
}
"""Input ranks (without the batch dimension) each architecture takes: 1 = [features],
2 = [sequence, dim], 3 = [channels, height, width]."""

DEFAULT_FOR_RANK: dict[int, str] = {1: "mlp", 2: "mlp", 3: "lenet5"}
"""The student of a spec that names none: a CNN for images, else an MLP."""

RANK_LAYOUTS: dict[int, str] = {
    1: "[features]",
    2: "[sequence, dim]",
    3: "[channels, height, width]",
}
"""What each accepted input rank means; used in error messages and docs."""

_FIELD = "student.arch"


def names() -> list[str]:
    """Every architecture name, sorted."""
    return sorted(INPUT_RANKS)


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _ranks_text(ranks: Sequence[int]) -> str:
    parts = [f"{r} {RANK_LAYOUTS.get(r, '')}".rstrip() for r in ranks]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def check_arch(name: object, input_shape: Sequence[int] | None = None) -> str:
    """``name`` when it is an architecture (that takes ``input_shape``'s rank, when given).

    Raises:
        SpecError: on ``student.arch``: an unknown name (listing the known ones), or an input
            rank the architecture does not take (naming the ranks it does).
    """
    if not isinstance(name, str) or name not in INPUT_RANKS:
        choices = ", ".join(names())
        raise SpecError(_FIELD, f"unknown architecture {name!r}; choose one of: {choices}")
    ranks = INPUT_RANKS[name]
    if input_shape is not None and len(input_shape) not in ranks:
        raise SpecError(
            _FIELD,
            f"{name} needs an input of rank {_ranks_text(ranks)}; got {_shape_text(input_shape)}",
        )
    return name


def default_arch(input_shape: Sequence[int]) -> str:
    """The architecture to use when the spec names none.

    Raises:
        SpecError: on ``student.arch`` when no architecture takes inputs of that rank.
    """
    rank = len(input_shape)
    if rank not in DEFAULT_FOR_RANK:
        raise SpecError(_FIELD, f"no student architecture takes inputs of rank {rank}")
    return DEFAULT_FOR_RANK[rank]


def student_arch(name: str | None, input_shape: Sequence[int]) -> str:
    """The student for a teacher of ``input_shape``: the spec's, checked, or the default."""
    return default_arch(input_shape) if name is None else check_arch(name, input_shape)
