"""DESIGN §6 for the attacks of issue 29 that are not in `default` (so tests/system/test_attacks_ci.py does not run
them): on the ci zoo (Llama-style, seed 0, default's inputs), against `none`, each is valid on the full
release format — the merge keeps half of both experts' gains jointly and beats its release-free control by 0.3,
or the fine-tuning gains 0.3 and beats its from-scratch control by 0.3. One none-only run checks them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.presets import load_preset
from bench.presets.grid import PluginSpec

MERGE = [PluginSpec(name="layerwise_merge"), PluginSpec(name="untrap_merge"),
         PluginSpec(name="multi_distill", config={"steps": 300})]
FINETUNE = [PluginSpec(name="mask_finetune")]


@pytest.mark.slow
def test_each_new_attack_beats_its_control_on_none(tmp_path: Path, ci_root: Path) -> None:
    from bench.commands.validate import check_attacks

    ci, default = load_preset("ci"), load_preset("default")
    assert default.grid is not None
    # the whole ci zoo restricted to Llama-style by the grid (its `none` releases are test_attacks_ci's);
    # the full format only: valid on one input form is the rule, and it halves the minutes this test costs
    grid = default.grid.model_copy(update={"defenses": [PluginSpec(name="none")], "seeds": [0], "models": ["llama"],
                                           "merge_attacks": MERGE, "finetune_attacks": FINETUNE,
                                           "release_formats": ["full"]})
    checks, _, _ = check_attacks(ci.model_copy(update={"grid": grid}), ci_root, tmp_path / "run")
    passing = {check.attack for check in checks if check.status == "pass"}
    assert passing == {spec.name for spec in MERGE + FINETUNE}, [
        (c.attack, c.release_format, c.status, round(c.score, 2), c.reasons) for c in checks]
