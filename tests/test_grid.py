"""The grid's expansion: which models get which track (`merge_models`)."""

from __future__ import annotations

import pytest

from bench.harness.grid import ConfigError, GridConfig, expand

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
