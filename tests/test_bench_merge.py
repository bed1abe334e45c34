"""``bench.fidelity --merge``: runs of different teachers in one table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.fidelity import METRICS, Row, main, merge_results, parse_variants, summarize


def payload(teacher: str, device: str = "cuda", error: str | None = None) -> dict[str, Any]:
    run = {"teacher": teacher, "student": "lenet5-half", "row": "default", "seed": 0}
    return {
        "benchmark": "fidelity",
        "command": f"python -m bench.fidelity --teachers {teacher}",
        "machine": {"device": device, "busy": False},
        "runtime": {"device": device},
        "variants": {},
        "skipped_teachers": [],
        "teacher_errors": {teacher: error} if error else {},
        "pairs": [] if error else [{"label": f"{teacher} -> lenet5-half", "rows": []}],
        "runs": [] if error else [run],
    }


def write(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_merge_joins_pairs_runs_and_errors_and_keeps_each_command(tmp_path: Path) -> None:
    paths = [
        write(tmp_path, "a.json", payload("digits_cnn")),
        write(tmp_path, "b.json", payload("digits_mlp")),
        write(tmp_path, "c.json", payload("digits_vit", error="RuntimeError: boom")),
    ]
    merged = merge_results(paths)
    assert [p["label"] for p in merged["pairs"]] == [
        "digits_cnn -> lenet5-half",
        "digits_mlp -> lenet5-half",
    ]
    assert [r["teacher"] for r in merged["runs"]] == ["digits_cnn", "digits_mlp"]
    assert merged["teacher_errors"] == {"digits_vit": "RuntimeError: boom"}
    assert [m["command"] for m in merged["merged_from"]] == [
        "python -m bench.fidelity --teachers digits_cnn",
        "python -m bench.fidelity --teachers digits_mlp",
        "python -m bench.fidelity --teachers digits_vit",
    ]


def test_merge_refuses_the_same_pair_twice_and_mixed_devices(tmp_path: Path) -> None:
    one = write(tmp_path, "a.json", payload("digits_cnn"))
    again = write(tmp_path, "b.json", payload("digits_cnn"))
    with pytest.raises(ValueError, match="digits_cnn -> lenet5-half is in both"):
        merge_results([one, again])
    cpu = write(tmp_path, "c.json", payload("digits_mlp", device="cpu"))
    with pytest.raises(ValueError, match="different devices"):
        merge_results([one, cpu])


def test_merge_command_writes_one_result_file(tmp_path: Path) -> None:
    paths = [
        write(tmp_path, "a.json", payload("wine_mlp")),
        write(tmp_path, "b.json", payload("breast_cancer_mlp_ln")),
    ]
    out = tmp_path / "out"
    assert main(["--merge", *map(str, paths), "--out", str(out)]) == 0
    written = json.loads((out / "fidelity-cuda.json").read_text(encoding="utf-8"))
    assert len(written["runs"]) == 2
    assert len(written["merged_from"]) == 2


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        # "fast, cutmix 0" once named the default preset's row: the option alone was looked up
        ("fast, cutmix 0", ["fast, cutmix 0"]),
        ("default, cutmix 0", ["default, cutmix 0"]),
        (
            "fast, range contrast 1,default, range contrast 1",
            ["fast, range contrast 1", "default, range contrast 1"],
        ),
        ("cutmix 0, bn prior 0", ["fast, cutmix 0", "fast, bn prior 0"]),
    ],
)
def test_variant_labels_name_their_preset_s_row(text: str, labels: list[str]) -> None:
    assert parse_variants(text) == labels


def test_a_row_summary_keeps_the_engine_s_candidate_estimates() -> None:
    row = Row("fast", "preset", "fast")
    base = {k: 0.5 for k in METRICS}
    records = [
        {**base, "seed": 0, "estimate_mix": 0.7, "estimate_range": 0.6},
        {**base, "seed": 1, "estimate_mix": 0.9},  # a run without input_range has no range probe
        {"seed": 2, "error": "RuntimeError: diverged", "estimate_mix": 0.1},
    ]
    summary = summarize(row, records)
    assert summary["estimate_mix"]["values"] == [0.7, 0.9]
    assert summary["estimate_mix"]["mean"] == pytest.approx(0.8)
    assert summary["estimate_range"]["values"] == [0.6]
    assert summary["failed"] == ["RuntimeError: diverged"]
