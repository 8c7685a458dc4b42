"""The grid's expansion: which models get which track (`merge_models`)."""

from __future__ import annotations

import pytest

from bench.config import ConfigError
from bench.harness.grid import expand
from bench.presets.grid import GridConfig

EXPERTS = {"llama": ["sort", "max"], "gpt2": ["sort", "max"]}


def _grid(**extra) -> GridConfig:
    return GridConfig.model_validate({"defenses": [{"name": "none"}], "merge_attacks": [{"name": "per_member"}],
                                      "finetune_attacks": [{"name": "lora_finetune"}], "seeds": [0], **extra})


def _models(cells, track: str) -> set[str]:
    return {cell.defense.model for cell in cells if cell.defense.track == track}


def test_merge_models_limit_the_merge_track_and_keep_the_finetune_track() -> None:
    every = expand(_grid(), EXPERTS, ["successor"])
    assert _models(every, "merge") == _models(every, "finetune") == {"llama", "gpt2"}
    llama_only = expand(_grid(merge_models=["llama"]), EXPERTS, ["successor"])
    assert _models(llama_only, "merge") == {"llama"} and _models(llama_only, "finetune") == {"llama", "gpt2"}
    assert [c for c in every if c.defense.model == "llama" or c.defense.track == "finetune"] == llama_only


def test_merge_models_outside_the_grids_models_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"merge_models names \['gpt2'\].*grid's models"):
        expand(_grid(models=["llama"], merge_models=["gpt2"]), EXPERTS, ["successor"])


def test_a_merge_attack_limited_to_some_merge_sizes_runs_only_there() -> None:
    experts = {"llama": ["sort", "max", "count"]}
    grid = _grid(models=["llama"], n_members=[2, 3],
                 merge_attacks=[{"name": "per_member"}, {"name": "merge_heal", "n_members": [2]}])
    merged = [cell for cell in expand(grid, experts, ["successor"]) if cell.defense.track == "merge"
              and cell.defense.defense != "control"]
    sizes = {(cell.attack, len(cell.members) + 1) for cell in merged}
    assert sizes == {("per_member", 2), ("per_member", 3), ("merge_heal", 2)}


def test_an_attack_size_the_grid_does_not_run_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"merge attack 'merge_heal' names n_members \[8\]"):
        _grid(n_members=[2], merge_attacks=[{"name": "merge_heal", "n_members": [8]}])
    with pytest.raises(ValueError, match=r"finetune attack 'lora_finetune' sets n_members"):
        _grid(finetune_attacks=[{"name": "lora_finetune", "n_members": [2]}])
