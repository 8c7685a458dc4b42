"""The verdict metrics on the ci zoo (DESIGN §5): the release-free control of merge-then-heal is recorded
and used; a release that wrecks the other members scores a low joint success although its protected task
survives the merge; a release without a trap reports `trap_formed = false`."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.plugins import DEFENSES, Defense, OwnerView, Release, register_defense
from bench.presets import Preset, load_preset
from bench.presets.grid import GridConfig, PluginSpec
from bench.report.leaderboard import run_and_write
from bench.results import read_csv

if "member_wrecker" not in DEFENSES.names():

    @register_defense
    class MemberWrecker(Defense):
        """Test defense: the plain expert plus Gaussian noise of half each weight matrix's RMS. Merged with
        another expert, the noise wrecks that expert's skill; a heal on T_p data restores T_p only."""

        name = "member_wrecker"
        description = "test plugin: the expert plus large weight noise"
        tracks = frozenset({"merge"})
        formats = frozenset({"full"})

        def protect(self, owner: OwnerView) -> Release:
            model = copy.deepcopy(owner.unprotected())
            generator = torch.Generator().manual_seed(1234 + owner.seed)
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if parameter.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                        rms = parameter.pow(2).mean().sqrt()
                        parameter.add_(0.5 * rms * torch.randn(parameter.shape, generator=generator))
            return Release(model)


@pytest.fixture(scope="module")
def verdict_cells(ci_root: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    ci = load_preset("ci")
    grid = GridConfig(defenses=[PluginSpec(name="none"), PluginSpec(name="member_wrecker"),
                                PluginSpec(name="trap2", config={"lambda": 0.0}, label="trap2_l0")],
                      merge_attacks=[PluginSpec(name="merge_heal"), PluginSpec(name="per_member")],
                      models=["llama"], release_formats=["full"], protected_tasks=["length"], seeds=[0])
    preset = Preset.model_validate({**ci.model_dump(), "name": "verdicts", "grid": grid.model_dump()})
    out = tmp_path_factory.mktemp("verdicts")
    run_and_write(preset, ci_root, out)
    return read_csv(out / "cells.csv", "cells")


def _cell(cells: pd.DataFrame, defense: str, attack: str) -> pd.Series:
    rows = cells[(cells["defense"] == defense) & (cells["attack"] == attack)]
    assert len(rows) == 1, rows[["defense", "attack"]]
    return rows.iloc[0]


@pytest.mark.slow
def test_merge_heal_release_free_control_is_recorded_and_used(verdict_cells: pd.DataFrame) -> None:
    control = _cell(verdict_cells, "control", "merge_heal")
    none = _cell(verdict_cells, "none", "merge_heal")
    assert control["status"] == "ok" and control["defense_config"] == '{"control": "release-free"}'
    assert none["control_found"] and none["control_acc"] == control["merged_acc"]
    assert not pd.isna(control["pre_heal_acc"]) and not pd.isna(none["pre_heal_acc"])
    # what the heal alone learns on T_p (measured ~0.2 against a base of 0.155) is below what the release gives
    assert control["merged_acc"] < none["merged_acc"] - 0.3
    wrecked = _cell(verdict_cells, "member_wrecker", "merge_heal")
    # against the fixed reference: the unprotected expert's own gain (none's release) over the base
    expected = (wrecked["merged_acc"] - control["merged_acc"]) / (none["utility"] - none["base_acc"])
    assert wrecked["kept_protected"] == pytest.approx(expected)


@pytest.mark.slow
def test_a_release_that_wrecks_the_other_members_gets_low_joint_success(verdict_cells: pd.DataFrame) -> None:
    wrecked = _cell(verdict_cells, "member_wrecker", "merge_heal")
    none = _cell(verdict_cells, "none", "merge_heal")
    assert wrecked["merged_acc"] >= 0.5 * none["merged_acc"]  # T_p survives the merge and heal
    t_p_only = (wrecked["merged_acc"] - wrecked["base_acc"]) / (none["merged_acc"] - none["base_acc"])
    assert t_p_only >= 0.5                                   # so a T_p-only metric would call the merge a success
    assert wrecked["kept_members"] <= 0.2                    # but the other member is gone
    assert wrecked["joint_kept"] <= 0.2


@pytest.mark.slow
def test_a_release_without_a_trap_has_trap_formed_false(verdict_cells: pd.DataFrame) -> None:
    untrapped = verdict_cells[(verdict_cells["defense"] == "trap2_l0") & (verdict_cells["status"] == "ok")]
    assert len(untrapped) == 2
    assert not untrapped["trap_formed"].astype(bool).any()
    assert (untrapped["trap_loss_gap"] <= 0.1).all()
