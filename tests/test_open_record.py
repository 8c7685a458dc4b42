"""An attack that reports something new is one file: a stage accuracy and a knob the harness has never heard
of reach cells.csv (`stage_acc`, `attack_knobs`) without a change to the harness."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from rich.console import Console

from bench.harness.grid import PluginSpec
from bench.harness.run import run_benchmark
from bench.plugins import ATTACKS
from bench.results import read_csv
from bench.submit.loading import load_file

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


def test_a_new_stage_and_knob_reach_cells_csv(micro_zoo, micro_preset, fake_scoring, tmp_path: Path) -> None:
    path = tmp_path / "staged_merge.py"
    path.write_text(ATTACK)
    with ATTACKS.scoped():
        load_file(path)
        grid = micro_preset.grid.model_copy(update={
            "merge_attacks": [PluginSpec(name="staged_merge_from_a_file")], "finetune_attacks": [], "seeds": [0]})
        preset = micro_preset.model_copy(update={"grid": grid})
        run_benchmark(preset, micro_zoo.root, tmp_path / "run", console=Console(quiet=True))
    cells = read_csv(tmp_path / "run" / "cells.csv", "cells")
    staged = cells[(cells["attack"] == "staged_merge_from_a_file") & (cells["status"] == "ok")]
    assert len(staged)
    for _, row in staged.iterrows():
        assert json.loads(row["attack_knobs"])["novelty_knob"] == 7
        stages = json.loads(row["stage_acc"])
        assert set(stages) == {"release_alone"} and 0.0 <= stages["release_alone"] <= 1.0
