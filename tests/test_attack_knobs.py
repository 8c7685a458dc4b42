"""Every knob an attack reports reaches cells.csv (`attack_knobs`, JSON), its search trace included, and
a cells.csv written before that column existed still reads."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from bench.harness.grid import PluginSpec
from bench.harness.run import run_benchmark
from bench.results import read_csv

REPO = Path(__file__).resolve().parent.parent


def test_a_coefficient_search_publishes_its_trace(micro_zoo, micro_preset, fake_scoring, tmp_path: Path) -> None:
    grid = micro_preset.grid.model_copy(update={"merge_attacks": [PluginSpec(name="per_member")],
                                                "finetune_attacks": [], "seeds": [0]})
    preset = micro_preset.model_copy(update={"grid": grid})
    run_benchmark(preset, micro_zoo.root, tmp_path / "run", console=Console(quiet=True))
    cells = read_csv(tmp_path / "run" / "cells.csv", "cells")
    searched = cells[(cells["attack"] == "per_member") & (cells["status"] == "ok")]
    assert len(searched)
    for text, method in zip(searched["attack_knobs"], searched["merge_method"], strict=True):
        knobs = json.loads(text)
        assert knobs["method"] == method
        trace = knobs["trace"]
        assert len(trace) == knobs["evaluations"] >= 2
        assert all(isinstance(trial["val"], float) for trial in trace)
        assert knobs["val_score"] == max(trial["val"] for trial in trace)


def test_a_cells_csv_without_the_knobs_column_still_reads() -> None:
    published = REPO / "leaderboard" / "ci-baseline.csv"
    assert "attack_knobs" not in published.read_text().splitlines()[0].split(",")
    cells = read_csv(published, "cells")
    assert (cells["attack_knobs"].fillna("") == "").all() and len(cells) > 10
