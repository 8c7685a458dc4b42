"""Nothing an attack reports is lost: a stage accuracy and a knob the harness has never heard of reach
cells.csv (`stage_acc`, `attack_knobs`) from an attack added as one file, a coefficient search's trace
publishes with it, and a cells.csv written before those columns existed still reads. One micro run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from bench.commands.submit.loading import load_file
from bench.plugins import ATTACKS
from bench.presets.grid import PluginSpec
from bench.report.leaderboard import run_and_write
from bench.results import read_csv

ATTACK = textwrap.dedent('''
    """A pinned task-arithmetic merge that also reports the release alone as a stage, and a knob."""
    from attacks.common import MergeInputs, member_weights, merge_knobs
    from bench.config import StrictModel
    from bench.plugins import Attack, AttackOutput, register_attack


    @register_attack(track="merge", family="pinned")
    class StagedMerge(Attack[StrictModel]):
        name = "staged_merge_from_a_file"
        description = "task arithmetic at weight 1; the release alone is its `release_alone` stage"

        def run(self, view):
            inputs = MergeInputs.from_view(view)
            layout = inputs.layout("task_arithmetic")
            parameters = {"weight": member_weights(list(inputs.members), 1.0, 1.0), "normalize": False}
            merged = inputs.merge("task_arithmetic", parameters, layout)
            knobs = merge_knobs("task_arithmetic", parameters, layout, view.seed, novelty_knob=7)
            return AttackOutput(models={1.0: merged}, knobs=knobs, stages={"release_alone": view.release})
''')


REPO = Path(__file__).resolve().parents[2]


_RUN: dict[str, pd.DataFrame] = {}


@pytest.fixture
def cells(micro_zoo, micro_preset, fake_scoring, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A micro run of the file's attack beside `per_member` (a coefficient search that reports its trace), made
    once for the module under the first test's scorer double."""
    if "cells" in _RUN:
        return _RUN["cells"]
    tmp_path = tmp_path_factory.mktemp("open-record")
    path = tmp_path / "staged_merge.py"
    path.write_text(ATTACK)
    with ATTACKS.scoped():
        load_file(path)
        grid = micro_preset.grid.model_copy(update={
            "merge_attacks": [PluginSpec(name="staged_merge_from_a_file"), PluginSpec(name="per_member")],
            "finetune_attacks": [], "seeds": [0]})
        preset = micro_preset.model_copy(update={"grid": grid})
        run_and_write(preset, micro_zoo.root, tmp_path / "run", console=Console(quiet=True))
    _RUN["cells"] = read_csv(tmp_path / "run" / "cells.csv", "cells")
    return _RUN["cells"]


def test_a_new_stage_and_knob_reach_cells_csv(cells: pd.DataFrame) -> None:
    staged = cells[(cells["attack"] == "staged_merge_from_a_file") & (cells["status"] == "ok")]
    assert len(staged)
    for _, row in staged.iterrows():
        assert json.loads(row["attack_knobs"])["novelty_knob"] == 7
        stages = json.loads(row["stage_acc"])
        assert set(stages) == {"release_alone"} and 0.0 <= stages["release_alone"] <= 1.0


def test_a_coefficient_search_publishes_its_trace(cells: pd.DataFrame) -> None:
    searched = cells[(cells["attack"] == "per_member") & (cells["status"] == "ok")]
    assert len(searched)
    for text, method in zip(searched["attack_knobs"], searched["merge_method"], strict=True):
        knobs = json.loads(text)
        assert knobs["method"] == method
        trace = knobs["trace"]
        assert len(trace) == knobs["evaluations"] >= 2
        assert all(isinstance(trial["val"], float) for trial in trace)
        assert knobs["val_score"] == max(trial["val"] for trial in trace)


def test_a_cells_csv_without_the_new_columns_still_reads() -> None:
    published = REPO / "leaderboard" / "ci-baseline.csv"
    header = published.read_text().splitlines()[0].split(",")
    assert "attack_knobs" not in header and "stage_acc" not in header
    old = read_csv(published, "cells")
    assert (old["attack_knobs"].fillna("") == "").all() and (old["stage_acc"].fillna("") == "").all() and len(old) > 10


def test_a_record_cached_before_the_csv_names_still_maps_and_an_unknown_key_is_named() -> None:
    """Records cached by an earlier version say `gain_at_0.125`; they publish into the same columns. A key that
    no column takes (a budget fraction the CSV has no column for) is a warning naming it, never silent."""
    from bench.harness.grid import expand
    from bench.harness.run import to_raw_row
    from bench.presets.grid import GridConfig

    grid = GridConfig.model_validate({"defenses": [{"name": "none"}], "finetune_attacks": [{"name": "lora_finetune"}],
                                      "seeds": [0]})
    cell = next(c for c in expand(grid, {"llama": ["sort", "max"]}, ["successor"]) if c.defense.track == "finetune")
    legacy = {"track": "finetune", "status": "ok", "gain_at_0.125": 0.1, "acc_at_0.125": 0.2, "gain_at_1": 0.5}
    row = to_raw_row(legacy, cell, "zoo")
    assert (row["gain_b0125"], row["acc_b0125"], row["gain_b1"]) == (0.1, 0.2, 0.5)
    with pytest.warns(UserWarning, match=r"gain_at_0\.3"):
        to_raw_row({**legacy, "gain_at_0.3": 0.4}, cell, "zoo")
