"""The rules the engine and the API share, each defined once in cake_core (issue 11).

The job spec's fields and limits (``cake_core.config``), the shape parser (``cake_core.shapes``),
the architecture/rank check (``cake_core.architectures``) and the zip guard
(``cake_core.zipguard``): torch-free, read by the API in its own process and by the engine.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cake_core.architectures import (
    DEFAULT_FOR_RANK,
    INPUT_RANKS,
    check_arch,
    default_arch,
    student_arch,
)
from cake_core.config import LIMITS, JobSpec, LossWeights, spec_fields
from cake_core.errors import SpecError
from cake_core.shapes import MAX_DIM, STRICT_HINT, parse_input_shape
from cake_core.zipguard import (
    UnsafeZipError,
    ZipLimits,
    check_declared_sizes,
    declared_entries,
    open_zip,
)

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# torch stays out
# --------------------------------------------------------------------------------------------


def test_the_shared_rules_import_without_torch() -> None:
    """The API process imports them; none may pull torch in."""
    code = (
        "import sys, cake_core.config, cake_core.shapes, cake_core.architectures, "
        "cake_core.zipguard; cake_core.config.resolve_spec({}); print('torch' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "False", run.stderr


# --------------------------------------------------------------------------------------------
# the spec's declarations
# --------------------------------------------------------------------------------------------


def test_every_section_field_is_declared_once_with_a_description() -> None:
    for section in spec_fields(JobSpec):
        assert section.info.description, section.path
        for field in spec_fields(section.section, section.path + ".") if section.section else ():
            assert field.info.description, field.path


def test_limits_keep_integer_and_float_ranges_apart() -> None:
    """Integer fields have integer bounds (the API documents them as such), numbers float ones."""
    by_path = {
        f.path: f
        for s in spec_fields(JobSpec)
        for f in (spec_fields(s.section, s.path + ".") if s.section else (s,))
    }
    by_path.update({f.path: f for f in spec_fields(LossWeights, "synthesis.weights.")})
    for path, (low, high) in LIMITS.items():
        expected = by_path[path].value_type
        assert type(low) is expected and type(high) is expected, path


# --------------------------------------------------------------------------------------------
# one shape parser, two grammars
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["(1, 28, 28)", "(13,)", "13,", "+13"])
def test_python_forms_are_the_clis_only(text: str) -> None:
    assert parse_input_shape(text) in ((1, 28, 28), (13,))
    with pytest.raises(SpecError) as err:
        parse_input_shape(text, strict=True)
    assert err.value.reason == STRICT_HINT


@pytest.mark.parametrize("text", ["[13,", "[" + "9" * 5000 + "]"])
def test_broken_json_is_refused_by_the_service_grammar(text: str) -> None:
    with pytest.raises(SpecError, match="is not valid JSON"):
        parse_input_shape(text, strict=True)


@pytest.mark.parametrize("strict", [False, True])
def test_both_grammars_share_the_bounds(strict: bool) -> None:
    for text, phrase in [("[4097]", "out of range"), ("[1,1,1,1,1]", "dimensions"),
                         ("[4096,4096]", "elements")]:  # fmt: skip
        with pytest.raises(SpecError, match=phrase) as err:
            parse_input_shape(text, strict=strict)
        assert err.value.field == "input_shape"


def test_a_huge_dimension_is_a_spec_error_not_a_crash() -> None:
    """int() refuses 4300+ digits; the CLI once let that ValueError escape."""
    with pytest.raises(SpecError, match=f"out of range; each must be 1..{MAX_DIM}"):
        parse_input_shape("9" * 5000)


def test_unbounded_shapes_are_for_building_students() -> None:
    assert parse_input_shape([4096, 4096], bounded=False) == (4096, 4096)
    assert parse_input_shape([1, 1, 1, 1, 1], bounded=False) == (1, 1, 1, 1, 1)
    for bad in ([], [0, 3], [True, 3]):
        with pytest.raises(SpecError):
            parse_input_shape(bad, bounded=False)


# --------------------------------------------------------------------------------------------
# one architecture/rank check
# --------------------------------------------------------------------------------------------


def test_the_registry_builds_exactly_the_checked_names() -> None:
    from cake_core.students import list_archs

    assert [a.name for a in list_archs()] == sorted(INPUT_RANKS)
    assert all(a.input_ranks == INPUT_RANKS[a.name] for a in list_archs())
    assert all(rank in INPUT_RANKS[name] for rank, name in DEFAULT_FOR_RANK.items())


def test_arch_check_names_the_field() -> None:
    assert student_arch(None, [1, 8, 8]) == "lenet5" and student_arch(None, [13]) == "mlp"
    assert student_arch("vit", [16, 8]) == "vit"
    for call, phrase in [
        (lambda: check_arch("alexnet", [13]), "unknown architecture 'alexnet'; choose one of"),
        (lambda: check_arch("lenet5", [13]), "lenet5 needs an input of rank 3"),
        (lambda: default_arch([1, 1, 8, 8]), "no student architecture takes inputs of rank 4"),
    ]:
        with pytest.raises(SpecError, match=phrase) as err:
            call()
        assert err.value.field == "student.arch"


# --------------------------------------------------------------------------------------------
# one zip guard, no private zipfile API
# --------------------------------------------------------------------------------------------

_LIMITS = ZipLimits(max_entries=10, max_expansion=100, expansion_floor=1 << 20)


def _zip(path: Path, members: dict[str, bytes], **kwargs: object) -> Path:
    with zipfile.ZipFile(path, "w", **kwargs) as zf:  # type: ignore[arg-type]
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_entry_count_is_read_from_the_end_record(tmp_path: Path) -> None:
    plain = _zip(tmp_path / "a.zip", {f"m{i}": b"x" for i in range(7)})
    assert declared_entries(plain) == 7
    with zipfile.ZipFile(plain, "a") as zf:
        zf.comment = b"a comment that is not a record"
    assert declared_entries(plain) == 7
    prefixed = tmp_path / "prefixed.zip"
    prefixed.write_bytes(b"#!/bin/sh\n" + plain.read_bytes())
    assert declared_entries(prefixed) == 7
    (tmp_path / "text").write_bytes(b"not a zip" * 100)
    assert declared_entries(tmp_path / "text") is None


def test_zip64_end_record_is_read(tmp_path: Path) -> None:
    """torch.jit.save writes zip64 end records; their count is the one that counts."""
    path = _zip(tmp_path / "z64.zip", {"a": b"1", "b": b"2"}, allowZip64=True)
    data = bytearray(path.read_bytes())
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<LL", data, eocd + 12)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 5000, 5000,
                         cd_size, cd_offset)  # fmt: skip
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    path.write_bytes(bytes(data[:eocd]) + record + locator + bytes(data[eocd:]))
    assert declared_entries(path) == 5000
    with pytest.raises(UnsafeZipError) as err:
        open_zip(path, _LIMITS)
    assert (err.value.kind, err.value.declared, err.value.limit) == ("entries", 5000, 10)


def test_declared_sizes_catch_bombs(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"x": bytes(8 << 20)}, compression=zipfile.ZIP_DEFLATED)
    with open_zip(bomb, _LIMITS) as zf:
        infos = zf.infolist()
    with pytest.raises(UnsafeZipError) as err:
        check_declared_sizes(infos, bomb.stat().st_size, _LIMITS)
    assert err.value.kind == "total" and err.value.declared == 8 << 20
    per_member = ZipLimits(10, 10**6, 0, max_member_ratio=100, member_floor=1 << 20)
    with pytest.raises(UnsafeZipError) as err:
        check_declared_sizes(infos, bomb.stat().st_size, per_member)
    assert err.value.kind == "member" and err.value.member is infos[0]
    check_declared_sizes(infos, bomb.stat().st_size, ZipLimits(10, 10**6, 0))


def test_no_end_record_is_a_bad_zip(tmp_path: Path) -> None:
    path = tmp_path / "half.zip"
    path.write_bytes(_zip(tmp_path / "whole.zip", {"a": b"x" * 1000}).read_bytes()[:500])
    with pytest.raises(zipfile.BadZipFile):
        open_zip(path, _LIMITS)
