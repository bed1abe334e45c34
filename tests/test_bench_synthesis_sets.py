"""``bench.fidelity --synthesis-cache``: synthetic sets kept on disk for later runs."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.quality import SynthesisReuse, SynthesisSets


def test_a_later_run_reads_the_sets_an_earlier_run_wrote(tmp_path: Path) -> None:
    state = {"x": torch.randn(4, 1, 8, 8), "labels": torch.rand(4, 10), "seconds": 12.5}
    first = SynthesisReuse(SynthesisSets(tmp_path), "teacher-a")
    first.save("synthesis/final", state)
    first.save("training/epoch-1", {"student": torch.zeros(1)})  # never shared

    later = SynthesisReuse(SynthesisSets(tmp_path), "teacher-a")
    loaded = later.load("synthesis/final")
    assert loaded is not None and later.hits == 1
    torch.testing.assert_close(loaded["x"], state["x"])
    assert loaded["seconds"] == 12.5
    assert later.load("training/epoch-1") is None
    assert SynthesisReuse(SynthesisSets(tmp_path), "teacher-b").load("synthesis/final") is None


def test_without_a_folder_the_sets_live_in_memory_only() -> None:
    sets = SynthesisSets()
    SynthesisReuse(sets, "k").save("synthesis/final", {"x": torch.ones(2)})
    assert SynthesisReuse(sets, "k").load("synthesis/final") is not None
    assert SynthesisReuse(SynthesisSets(), "k").load("synthesis/final") is None
