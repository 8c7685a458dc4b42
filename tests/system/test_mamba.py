"""A state-space model through the whole harness: every defense and every attack on a micro Mamba zoo.

Trap², PMP and the anti-fine-tuning baseline claim nothing about attention, so they must produce releases
for Mamba; the transformer-specific re-parameterisations (PaRaMS-, Merge-Lock-style) and the alignment that
undoes them are N/A by declaration, and nothing else may be. Accuracy is not the point at this size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from bench.plugins import ATTACKS, DEFENSES
from bench.presets import Preset, load_preset
from bench.report.leaderboard import run_and_write
from bench.results import read_csv
from bench.zoo.architectures import TRANSFORMER_FAMILIES

#: The smallest settings of the attacks whose defaults train or search for long.
SMALL_ATTACK_CONFIGS: dict[str, dict] = {
    "adaptive_coefficient": {"coefficients": [0.5, 1.0], "densities": [0.5]},
    "per_member": {"weights": [0.5, 1.0]},
    "merge_heal": {"steps": 3},
    "distill_merge": {"steps": 3, "coefficients": [1.0], "densities": [0.5]},
    "regmean": {"max_examples": 16},
    "lora_finetune": {"lr": [1.0e-3], "steps": [4]},
    "full_finetune": {"lr": [1.0e-4], "steps": [4]},
}
SMALL_DEFENSE_CONFIGS: dict[str, dict] = {
    "pmp": {"mask_max_steps": 6, "project_every": 3, "iou_patience": 2},
    "anti_finetune": {"outer_steps": 2, "inner_steps": 2, "proxies": 2, "probe_steps": 3},
}
#: Declared transformer-only: N/A on Mamba, and nothing else.
TRANSFORMER_ONLY = {"params", "merge_lock", "align_to_base"}


def builtin(registry, package: str) -> list[str]:
    """The project's own plugins (other tests register theirs in the same process)."""
    return [name for name in registry.names() if registry.get(name).__module__.startswith(package)]


def micro_mamba() -> Preset:
    data = load_preset("micro").model_dump(mode="json")
    data["zoo"]["models"] = {"mamba": {"architecture": {"family": "mamba", "hidden_size": 32, "num_layers": 1,
                                                        "state_size": 8, "expand": 2}}}
    data["grid"] = {
        "defenses": [{"name": name, "config": SMALL_DEFENSE_CONFIGS.get(name, {})}
                     for name in builtin(DEFENSES, "defenses.")],
        "merge_attacks": [{"name": name, "config": SMALL_ATTACK_CONFIGS.get(name, {})}
                          for name in builtin(ATTACKS, "attacks.")
                          if ATTACKS.get(name).track == "merge"],
        "finetune_attacks": [{"name": name, "config": SMALL_ATTACK_CONFIGS[name]}
                             for name in ("lora_finetune", "full_finetune")],
        "protected_tasks": ["sort"], "seeds": [0], "budget_fractions": [0.5, 1.0]}
    return Preset.model_validate(data)


def test_mamba_is_not_a_transformer_family() -> None:
    assert "mamba" not in TRANSFORMER_FAMILIES
    for name in ("params", "merge_lock"):
        assert not DEFENSES.get(name)().supports("merge", "full", "mamba"), name
    for name in ("trap2", "none"):
        assert DEFENSES.get(name)().supports("merge", "full", "mamba"), name


@pytest.mark.slow
def test_every_defense_and_attack_runs_on_a_micro_mamba(tmp_path: Path) -> None:
    summary = run_and_write(micro_mamba(), tmp_path / "root", tmp_path / "run", console=Console(quiet=True))
    cells = read_csv(summary.out_dir / "cells.csv", "cells")  # the schema's reader: "n/a" stays a status
    failed = cells[cells["status"] == "failed"]
    assert failed.empty, failed[["defense", "attack", "release_format", "error"]].to_string()
    assert set(cells["family"]) == {"mamba"}
    na = cells[cells["status"] == "n/a"]
    # N/A only where a plugin declares it: the transformer-only ones, and full-only defenses / adapter-only
    # attacks on the other format
    for _, row in na.iterrows():
        defense = DEFENSES.get(row["defense"]) if row["defense"] != "control" else None
        declared = (row["defense"] in TRANSFORMER_ONLY or row["attack"] in TRANSFORMER_ONLY
                    or (defense is not None and row["release_format"] not in defense.formats)
                    or row["attack"] == "adapter_weighted" and row["release_format"] == "full")
        assert declared, f"{row['defense']} × {row['attack']} ({row['release_format']}) is n/a: {row['error']}"
    ok = cells[cells["status"] == "ok"]
    ran = {(row["defense"], row["attack"]) for _, row in ok.iterrows()}
    for defense in ("none", "trap2"):
        for attack in builtin(ATTACKS, "attacks."):
            if ATTACKS.get(attack).track == "merge" and attack not in TRANSFORMER_ONLY:
                assert (defense, attack) in ran, (defense, attack)
    for defense in ("none", "pmp", "anti_finetune"):
        for attack in ("lora_finetune", "full_finetune"):
            assert (defense, attack) in ran, (defense, attack)
    assert ok["merged_acc"].dropna().between(0, 1).all()
