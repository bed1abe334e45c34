"""The one parser of an input shape (one sample's dimensions, without the batch dimension).

Every place that takes a shape uses it: the CLI's ``--input-shape``, the engine's teacher
check, the student registry and the REST API's ``input_shape`` form part. It is torch-free, so
the API runs it in its own process and refuses a bad shape before it starts a teacher check.

Two text grammars, one parser: the service's (``strict``) accepts exactly a JSON array of
positive integers (``[1,28,28]``) or bare comma-separated ones (``1,28,28``), so broken JSON such
as ``[13,`` is an error rather than ``[13]``; the CLI also takes what people paste from Python,
``(1, 28, 28)`` and ``(13,)``. Both then check the same bounds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from cake_core.errors import SpecError

__all__ = [
    "MAX_DIM",
    "MAX_INPUT_ELEMENTS",
    "MAX_RANK",
    "PROBE_BATCH",
    "format_shape",
    "parse_input_shape",
    "type_phrase",
]

MAX_DIM = 4096
"""Largest allowed size of one input dimension."""

MAX_RANK = 4
"""Largest allowed number of input dimensions (without the batch dimension)."""

MAX_INPUT_ELEMENTS = 2**22
"""Largest allowed number of elements of one input sample (16 MiB of float32)."""

FIELD = "input_shape"

STRICT_HINT = "must be a JSON array of positive integers, e.g. [1,28,28], or the form 1,28,28"
"""The service's message for any shape text outside its grammar."""

_STRICT_LIST = re.compile(r"[0-9]{1,18}(?:[ \t]*,[ \t]*[0-9]{1,18})*")
_TOKEN = re.compile(r"[+-]?\d+")
_MAX_DIGITS = 18  # int() refuses 4300+ digits; no dimension needs more than a few

PROBE_BATCH = 4
"""Inputs in a teacher's probe batch: at least 2, so the batch dimension cannot pass for the
classes. Here, torch-free, because the API names the probe's shape in its messages."""


def parse_input_shape(
    value: str | Sequence[int], *, strict: bool = False, bounded: bool = True
) -> tuple[int, ...]:
    """Parse and validate the declared input shape of one sample (no batch dimension).

    A sequence of ints (or integer-like scalars; never booleans) is taken as is. Text is read
    by the service's grammar with ``strict`` (see the module docstring), else also as
    ``"(1, 28, 28)"``, ``"13"`` or ``"(13,)"`` (a trailing comma is allowed). The bounds
    (:data:`MAX_RANK`, :data:`MAX_DIM`, :data:`MAX_INPUT_ELEMENTS`) keep a probe batch and the
    synthesis buffers to a size the service can afford; they are checked here so the user gets a
    validation error on the spec rather than an out-of-memory failure later. ``bounded=False``
    checks only that the shape is non-empty positive integers (for building a student, which
    has no such limits).

    Raises:
        SpecError: with field ``"input_shape"`` and the reason.
    """
    if isinstance(value, str):
        dims = _strict_text(value) if strict else _text(value)
    elif isinstance(value, bytes | bytearray) or not isinstance(value, Sequence):
        raise SpecError(
            FIELD,
            f"must be a list of integers or a string like '1,28,28', not {type_phrase(value)}",
        )
    else:
        dims = _sequence(value)
    _check_bounds(dims, bounded=bounded)
    return tuple(dims)


def format_shape(shape: Sequence[int]) -> str:
    """Format a shape the way users write it: ``[4, 1, 28, 28]``."""
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _strict_text(text: str) -> list[int]:
    """The service's grammar; anything outside it is the one hint (nothing is guessed)."""
    stripped = text.strip()
    value: Any
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except (ValueError, RecursionError):  # JSONDecodeError, or an integer of 4300+ digits
            raise SpecError(FIELD, f"is not valid JSON; {STRICT_HINT}") from None
    elif _STRICT_LIST.fullmatch(stripped):
        value = [int(part) for part in stripped.split(",")]
    else:
        raise SpecError(FIELD, STRICT_HINT)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    ):
        raise SpecError(FIELD, STRICT_HINT)
    return value


def _text(value: str) -> list[int]:
    """The CLI's grammar: also Python's tuple notation, with a message per mistake."""
    text = value.strip()
    if (text[:1], text[-1:]) in {("[", "]"), ("(", ")")}:
        text = text[1:-1].strip()
    if text.endswith(","):
        text = text[:-1].rstrip()
    if not text:
        raise SpecError(FIELD, "is empty; give the shape of one sample, e.g. 1,28,28")
    dims: list[int] = []
    for part in text.split(","):
        token = part.strip()
        if not _TOKEN.fullmatch(token):
            what = f"{token[:20]!r} is not an integer" if token else "has an empty entry"
            raise SpecError(FIELD, f"{what}; give comma-separated integers, e.g. 1,28,28")
        if len(token.lstrip("+-")) > _MAX_DIGITS:
            raise SpecError(
                FIELD, f"dimension {token[:20]}... is out of range; each must be 1..{MAX_DIM}"
            )
        dims.append(int(token))
    return dims


def _sequence(value: Sequence[Any]) -> list[int]:
    dims: list[int] = []
    for item in value:
        if isinstance(item, bool):
            raise SpecError(FIELD, "dimensions must be integers, not booleans")
        try:
            dims.append(int(item.__index__()))  # ints and integer-like (numpy) scalars
        except (AttributeError, TypeError):
            raise SpecError(
                FIELD, f"dimensions must be integers, got {type_phrase(item)} {item!r:.20}"
            ) from None
    return dims


def _check_bounds(dims: list[int], *, bounded: bool) -> None:
    if not dims or (bounded and len(dims) > MAX_RANK):
        raise SpecError(
            FIELD,
            f"has {len(dims)} dimensions; give 1 to {MAX_RANK} dimensions without the batch "
            "dimension, e.g. 1,28,28 or 13",
        )
    for d in dims:
        if d < 1 or (bounded and d > MAX_DIM):
            raise SpecError(FIELD, f"dimension {d} is out of range; each must be 1..{MAX_DIM}")
    total = math.prod(dims)
    if bounded and total > MAX_INPUT_ELEMENTS:
        raise SpecError(
            FIELD,
            f"{format_shape(dims)} has {total} elements per sample; at most "
            f"{MAX_INPUT_ELEMENTS} are allowed",
        )


def type_phrase(value: object) -> str:
    """Name a Python value's type for a message: 'a tuple', 'None', 'a dict'."""
    if value is None:
        return "None"
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}"
