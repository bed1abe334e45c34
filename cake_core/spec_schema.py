"""Reading the spec's declarations: its fields, ranges and choices, and its validation errors.

:func:`spec_fields` lists what :mod:`cake_core.spec` declares, so the REST API builds its
request models from it (``api.schemas``: ``/openapi.json`` documents exactly these ranges and
defaults, and the API refuses what the engine would refuse); :data:`LIMITS` and
:data:`CHOICES` are derived tables of the same ranges and choices. :func:`validate` builds a
:class:`~cake_core.spec.JobSpec` with pydantic and turns its first error into a
:class:`~cake_core.errors.SpecError` naming the field, in the engine's words. It lives apart
from the declarations because it is machinery over them, not part of them. No torch.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from cake_core.errors import SpecError
from cake_core.spec import DefaultNote, JobSpec

# --------------------------------------------------------------------------------------------
# reading the definition: fields, ranges, choices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecField:
    """One field of a spec section as declared in :mod:`cake_core.spec`, for those who document
    or re-validate it.

    ``value_type`` is the bare value type (``int``, ``float``, ``bool``, ``str``, a ``Literal``
    or a nested section's dataclass), without None and without the engine's validators (which
    are the engine's leniencies, not the field's type). ``default`` is the reference value.
    ``info`` holds the declared range (``ge``/``le``, ``max_length``), description and schema
    extras.
    """

    name: str
    path: str
    value_type: Any
    default: Any
    info: FieldInfo
    default_note: str | None

    @property
    def section(self) -> type | None:
        """The nested section's dataclass (``synthesis.weights`` -> LossWeights), else None."""
        return self.value_type if dataclasses.is_dataclass(self.value_type) else None

    @property
    def limits(self) -> tuple[float, float] | None:
        """Inclusive (low, high) when the field declares a range."""
        low = next((m.ge for m in self.info.metadata if isinstance(m, annotated_types.Ge)), None)
        high = next((m.le for m in self.info.metadata if isinstance(m, annotated_types.Le)), None)
        return None if low is None or high is None else (low, high)

    @property
    def max_length(self) -> int | None:
        """The longest accepted text of a string field, when it declares one."""
        caps = [m.max_length for m in self.info.metadata if isinstance(m, annotated_types.MaxLen)]
        return caps[0] if caps else None

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The allowed values of an enumerated field."""
        return (
            typing.get_args(self.value_type)
            if typing.get_origin(self.value_type) is Literal
            else None
        )


def _bare(annotation: Any) -> Any:
    """``Annotated[Float | None, ...]`` -> ``float``: the value type alone."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _bare(members[0])
    return annotation


@functools.cache
def spec_fields(section: type = JobSpec, prefix: str = "") -> tuple[SpecField, ...]:
    """The declared fields of ``section`` (a spec dataclass), in declaration order."""
    hints = typing.get_type_hints(section, include_extras=True)
    out = []
    for f in dataclasses.fields(section):
        annotation = hints[f.name]
        info = FieldInfo.from_annotation(annotation)
        note = next((m.text for m in info.metadata if isinstance(m, DefaultNote)), None)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(SpecField(f.name, prefix + f.name, _bare(annotation), default, info, note))
    return tuple(out)


def _leaves(section: type = JobSpec, prefix: str = "") -> list[SpecField]:
    out: list[SpecField] = []
    for spec_field in spec_fields(section, prefix):
        if spec_field.section is not None:
            out += _leaves(spec_field.section, spec_field.path + ".")
        else:
            out.append(spec_field)
    return out


LIMITS: dict[str, tuple[float, float]] = {
    f.path: limits for f in _leaves() if (limits := f.limits) is not None
}
"""Inclusive (low, high) of every numeric field, by dotted path (read from the declarations)."""
CHOICES: dict[str, tuple[str, ...]] = {
    f.path: choices for f in _leaves() if (choices := f.choices) is not None
}
"""Allowed values of every enumerated field, by dotted path (read from the declarations)."""


@functools.cache
def _validator() -> TypeAdapter[JobSpec]:
    """Built on first use: the CLI's ``--help`` need not pay for it."""
    return TypeAdapter(JobSpec)


_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_RANGE = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def _section_at(path: tuple[str | int, ...]) -> type:
    """The spec dataclass that holds the field at ``path``."""
    section: type = JobSpec
    for part in path[:-1]:
        found = next((f.section for f in spec_fields(section) if f.name == part), None)
        if found is None:
            break
        section = found
    return section


def _spec_error(err: ErrorDetails) -> SpecError:
    """Pydantic's error about one field, in the engine's words (the CLI shows it verbatim)."""
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc)
    kind, value = err["type"], err.get("input")
    if kind in _UNKNOWN:
        known = ", ".join(sorted(f.name for f in spec_fields(_section_at(loc))))
        return SpecError(where, f"unknown field; known fields: {known}")
    if kind.startswith(("dataclass", "dict", "model")):
        return SpecError(where or "spec", f"expected an object, got {type(value).__name__}")
    if kind in _RANGE and where in LIMITS:
        low, high = LIMITS[where]
        return SpecError(where, f"must be between {low:g} and {high:g}, got {_num(value)}")
    if kind == "literal_error" and where in CHOICES:
        return SpecError(where, f"must be one of {', '.join(CHOICES[where])}; got {value!r}")
    if kind == "bool_type":
        return SpecError(where, "expected true or false")
    if kind.startswith("int_"):
        got = f", got {value}" if isinstance(value, float) else ""
        return SpecError(where, f"expected an integer{got}")
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):
        # an int beyond a float's range (JSON allows any digits)
        return SpecError(where, f"must be a finite number, got {_num(value)}")
    if kind.startswith("float_"):
        return SpecError(where, "expected a number")
    if kind == "finite_number":
        return SpecError(where, "must be a finite number")
    if kind == "string_type":
        return SpecError(where, "expected a string or null")
    return SpecError(where, err["msg"])


def validate(data: dict[str, Any]) -> JobSpec:
    """Build the spec from ``data``; the first problem (an unknown field first) as SpecError."""
    try:
        return _validator().validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = next((e for e in errors if e["type"] in _UNKNOWN), errors[0])
        raise _spec_error(first) from None


def _num(value: float) -> str:
    """A number for a message; ``:g`` alone overflows on integers beyond a float's range."""
    if isinstance(value, int) and abs(value) > 10**15:
        text = str(value)
        return f"{text[:8]}... ({len(text.lstrip('-'))} digits)"
    return f"{value:g}"
