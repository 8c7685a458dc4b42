"""Seed-free release-free controls are computed once (bench.harness.grid.shared_controls): which cells
share, and that a shared control equals what computing it at its own seed gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.harness.context import get_context
from bench.harness.controls import CONTROL_DEFENSE
from bench.harness.grid import expand, shared_controls
from bench.harness.stages import run_cell
from bench.presets.grid import GridConfig
from bench.report.leaderboard import run_and_write
from bench.results import read_csv
from bench.results.columns import RAW_COLUMNS

SEED_FREE = {"name": "per_member"}
SEEDED = [{"name": "merge_heal"}, {"name": "adaptive_coefficient", "config": {"method": "dare_ties"}}]


def _outcome(record: dict) -> dict[str, str]:
    """What a control cell found: the merged model's scores (the double hashes its weights) and its knobs."""
    return {key: json.dumps(record.get(key), sort_keys=True)
            for key in ("merged_acc", "merged_acc_by_member", "knob_weights")}


def _grid(**extra) -> GridConfig:
    return GridConfig.model_validate({"defenses": [{"name": "none"}], "merge_attacks": [SEED_FREE, *SEEDED],
                                      "finetune_attacks": [{"name": "lora_finetune"}], "seeds": [2, 0, 1], **extra})


def test_only_seed_free_merge_controls_share_and_the_first_seed_computes() -> None:
    cells = expand(_grid(), {"llama": ["sort", "max"]}, ["successor"])
    shared = shared_controls(cells)
    assert shared, "per_member's controls must be shared"
    for index, computed in shared.items():
        cell, source = cells[index], cells[computed]
        assert cell.defense.defense == CONTROL_DEFENSE == source.defense.defense and cell.defense.track == "merge"
        assert cell.attack == "per_member" and (cell.defense.seed, source.defense.seed) in ((1, 0), (2, 0))
        assert (cell.attack_key, cell.task, cell.members, cell.defense.release_format) == (
            source.attack_key, source.task, source.members, source.defense.release_format)
        assert computed not in shared
    per_member_controls = [i for i, c in enumerate(cells)
                           if c.defense.defense == CONTROL_DEFENSE and c.attack == "per_member"]
    assert len(shared) == len(per_member_controls) * 2 // 3  # seeds 1 and 2 of each input


@pytest.mark.slow
def test_a_shared_control_is_what_its_own_seed_computes(micro_zoo, micro_preset, fake_scoring, tmp_path: Path) -> None:
    """The run publishes the first seed's numbers at every seed; computing the seed-1 control for real gives
    the same record (the property `Attack.seed_free` declares), while a seeded attack's control may differ."""
    grid = micro_preset.grid.model_copy(update={"merge_attacks": _grid().merge_attacks, "finetune_attacks": [],
                                                "seeds": [0, 1], "release_formats": ["full", "adapter"]})
    preset = micro_preset.model_copy(update={"grid": grid})
    first = run_and_write(preset, micro_zoo.root, tmp_path / "run", console=Console(quiet=True))
    again = run_and_write(preset, micro_zoo.root, tmp_path / "again", console=Console(quiet=True))
    assert again.cached == again.cells == first.cells, "a fully cached re-run counts the shared copies as cached"
    cells = read_csv(tmp_path / "run" / "cells.csv", "cells")
    controls = cells[(cells["defense"] == CONTROL_DEFENSE) & (cells["attack"] == "per_member")]
    assert set(controls["seed"]) == {0, 1}
    raw = [column for column in RAW_COLUMNS if column not in ("seed", "attack_seconds", "defense_seconds")]
    by_seed = {seed: frame[raw].sort_values(["release_format", "task"]).reset_index(drop=True)
               for seed, frame in controls.groupby("seed")}
    differ = [c for c in by_seed[0].columns if not by_seed[0][c].equals(by_seed[1][c])]
    assert not differ, differ

    ctx = get_context(preset, micro_zoo.root)
    expanded = expand(grid, {name: micro_preset.zoo.expert_tasks_of(name) for name in micro_zoo.model_names},
                      micro_preset.zoo.downstream_tasks)
    shared = shared_controls(expanded)
    for index, computed in shared.items():
        own = run_cell(ctx, expanded[index], list(grid.budget_fractions))
        first = run_cell(ctx, expanded[computed], list(grid.budget_fractions))
        assert own["status"] == first["status"] == "ok"
        assert own["seed"] == 1 and first["seed"] == 0
        assert _outcome(own) == _outcome(first)
