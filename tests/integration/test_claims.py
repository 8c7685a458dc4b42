"""The claims table and the trade-off plots (DESIGN §9): verdicts on hand-computed numbers, and a micro run
with the papers' sweeps (scored by the double) that renders and publishes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench.presets.grid import PluginSpec
from bench.report.claims import HOLDS, ProtocolMerge, claims_section, merge_verdict, pmp_claims, rho_claim
from bench.report.sweeps import paper_protocol_mask, pmp_settings, trap2_reference, trap2_settings
from bench.results import read_csv


def test_a_cut_is_measured_against_the_unprotected_merge_margin_over_the_base() -> None:
    # the paper's own headline: base 42.5, expert 88.1, none's merge 48.3, Trap²'s 23.1
    paper = ProtocolMerge("adapter", "task_arithmetic", 0.425, 0.881, 0.483, 0.231, 0.55, 0.26)
    assert paper.kept_none == pytest.approx((0.483 - 0.425) / (0.881 - 0.425))  # ≈ 13 %
    assert paper.cut == pytest.approx((0.483 - 0.231) / (0.483 - 0.425))  # below the base: cut > 1
    verdict, reason = merge_verdict([paper], [0.2])
    assert verdict == "reproduced" and "13%" in reason
    assert merge_verdict([paper], [0.9])[0] == "partly"  # an adaptive attack recovers the merge
    half = ProtocolMerge("full", "ties", 0.2, 0.9, 0.6, 0.45, 0.7, 0.5)  # cut (0.6 − 0.45) / 0.4 = 0.375
    assert half.cut == pytest.approx(0.375) and HOLDS > half.cut
    assert merge_verdict([paper, half], [0.2])[0] == "partly"  # the weakest method decides
    small = ProtocolMerge("full", "ties", 0.2, 0.9, 0.6, 0.55, 0.7, 0.6)
    assert merge_verdict([small], [0.0])[0] == "not"
    nothing = ProtocolMerge("full", "ties", 0.5, 0.9, 0.4, 0.1, 0.4, 0.1)  # none's merge is below the base
    assert math.isnan(nothing.cut) and merge_verdict([nothing], [0.0])[0] == "not"
    assert merge_verdict([], [])[0] == "not run"


def test_strength_set_by_rho_needs_a_monotone_span() -> None:
    settings = pd.DataFrame({"defense": ["a", "b", "c"], "rho": [0.5, 0.7, 0.9], "complement": ["frozen"] * 3})
    assert rho_claim(settings, {"a": 0.2, "b": 0.5, "c": 0.9}, "m").verdict == "reproduced"
    assert rho_claim(settings, {"a": 0.2, "b": 0.9, "c": 0.5}, "m").verdict == "partly"
    assert rho_claim(settings, {"a": 0.90, "b": 0.92, "c": 0.95}, "m").verdict == "not"
    assert rho_claim(settings.iloc[:1], {"a": 0.2}, "m").verdict == "not run"


def _cells(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_sweep_settings_are_read_off_the_defense_config() -> None:
    trap = {"lambda": 0.0, "s_min": 0.05, "s_max": 2.0, "steps": None}
    cells = _cells([
        {"defense": "trap2_l0", "defense_config": json.dumps(trap)},
        {"defense": "trap2_l0.01", "defense_config": json.dumps({**trap, "lambda": 0.01})},
        {"defense": "trap2_l0.01_long", "defense_config": json.dumps({**trap, "lambda": 0.01, "steps": 600})},
        {"defense": "pmp_r0.5", "defense_config": json.dumps({"rho": 0.5, "complement": "frozen", "mask_max_steps": 5})},
        {"defense": "none", "defense_config": "{}"},
    ])
    settings = trap2_settings(cells)
    assert list(settings["defense"]) == ["trap2_l0", "trap2_l0.01", "trap2_l0.01_long"]
    assert trap2_reference(settings) == "trap2_l0.01"  # the paper's λ at the zoo's own budget
    assert list(pmp_settings(cells)["rho"]) == [0.5]


def test_the_paper_protocol_is_the_normalised_search_at_the_largest_merge() -> None:
    search = {"method": "task_arithmetic", "coefficients": [0.1, 1.0], "patience": 10}
    normalised = json.dumps({**search, "objective": "normalised"})
    cells = _cells([
        {"attack": "trap2_protocol_ta", "attack_config": normalised, "n_members": 8, "track": "merge"},
        {"attack": "adaptive_coefficient", "attack_config": normalised, "n_members": 2, "track": "merge"},
        {"attack": "adaptive_coefficient", "attack_config": json.dumps({**search, "objective": "all"}),
         "n_members": 8, "track": "merge"},
        {"attack": "per_member", "attack_config": "{}", "n_members": 8, "track": "merge"},
    ])
    assert list(paper_protocol_mask(cells)) == [True, False, False, False]


def test_the_protocol_mask_of_a_run_without_merge_cells_is_empty() -> None:
    # a fine-tuning-only run: pandas 3 keeps the empty string dtype through `map`, which `&` refused (CI, s7)
    empty = pd.DataFrame({"attack_config": pd.Series([], dtype="str"), "track": pd.Series([], dtype="str"),
                          "n_members": pd.Series([], dtype="int64")})
    assert paper_protocol_mask(empty).empty


def _pmp_cells(gain_none: float) -> pd.DataFrame:
    config = json.dumps({"rho": 0.5, "complement": "frozen", "mask_max_steps": 5})
    common = {"model": "llama", "track": "finetune", "release_format": "full", "status": "ok", "task": "shift",
              "attack_config": "{}", "attack_key": "k", "seed": 0, "n_members": 1}
    return _cells([{**common, "defense": "pmp", "defense_config": config, "gain_b1": 0.1, "utility_retention": 0.95},
                   {**common, "defense": "none", "defense_config": "{}", "gain_b1": gain_none,
                    "utility_retention": 1.0}])


def test_pmp_claims_skip_tasks_without_a_gain_over_scratch_and_count_the_rest() -> None:
    # a micro run has no scratch control: every gain is missing, so there is no cut (was: idxmax on all-NA)
    board = pd.DataFrame([{"defense": "pmp", "model": "llama", "track": "finetune", "release_format": "full",
                           "status": "ok", "attack_success": 0.4, "attack_success_lo": 0.3,
                           "attack_success_hi": 0.5, "worst_attack": "lora_finetune"}])
    claims = {c.claim: c for c in pmp_claims(_pmp_cells(math.nan), board)}
    assert claims["fine-tuning gains cut, base preserved"].ours_protocol == "–"
    claims = {c.claim: c for c in pmp_claims(_pmp_cells(0.3), board)}
    assert claims["fine-tuning gains cut, base preserved"].ours_protocol == "pmp 20.0 pts"
    assert claims_section(_pmp_cells(math.nan), board)[0] == "## Claims against the papers"


@pytest.mark.slow
def test_a_sweep_run_renders_and_publishes_claims_and_tradeoff_plots(micro_preset, micro_zoo, tmp_path: Path,
                                                                     fake_scoring) -> None:
    from bench.report.leaderboard import publish, run_and_write

    grid = micro_preset.grid.model_copy(update={
        "models": ["llama"], "protected_tasks": ["sort"], "release_formats": ["full"],
        "defenses": [PluginSpec(name="none"),
                     PluginSpec(name="trap2", config={"lambda": 0.0}, label="trap2_l0"),
                     PluginSpec(name="trap2", config={"lambda": 0.1}, label="trap2_l0.1"),
                     PluginSpec(name="pmp", config={"rho": 0.5, "mask_max_steps": 3}, label="pmp_r0.5"),
                     PluginSpec(name="pmp", config={"rho": 0.9, "mask_max_steps": 3}, label="pmp_r0.9")],
        "merge_attacks": [PluginSpec(name="adaptive_coefficient", config={
            "method": "task_arithmetic", "objective": "normalised", "patience": 10, "coefficients": [0.5, 1.0]})]})
    preset = micro_preset.model_copy(update={"grid": grid})
    summary = run_and_write(preset, micro_zoo.root, tmp_path / "run")
    assert summary.failed == 0
    readme = (tmp_path / "run" / "README.md").read_text()
    assert "## Claims against the papers" in readme and "## Trap²: λ × training budget" in readme
    for claim in ("standalone accuracy unchanged (trap2_l0.1)", "fine-tuning gains cut", "strength set by ρ"):
        assert claim in readme
    cells = read_csv(tmp_path / "run" / "cells.csv", "cells")
    assert paper_protocol_mask(cells).any()
    # a plot by hand, for an architecture this run has no cell of (so no render of the run draws it): publishing
    # carries the plots a run holds, and a re-render removes the stale ones. (Whether the double's hashed
    # scores leave a valid attack here, and so a plot of the run's own, depends on the trained weights.)
    stale = tmp_path / "run" / "tradeoff_merge_gpt2.png"
    stale.write_bytes(b"\x89PNG\r\n\x1a\n")
    published = publish(tmp_path / "run", tmp_path / "leaderboard", name="paper")
    assert (published / stale.name).is_file()
    assert run_and_write(preset, micro_zoo.root, tmp_path / "run").cached == summary.cells
    assert not stale.exists()


def _board(rows: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"defense": d, "track": t, "model": "llama", "release_format": f, "status": "ok",
                          "protection": p, "utility_retention": u} for d, t, f, p, u in rows])


def test_tradeoff_plots_draw_one_png_per_track_and_model_with_a_sweep(tmp_path: Path) -> None:
    from bench.report.tradeoff import plot_tradeoffs

    trap = {"lambda": 0.0, "s_min": 0.05, "s_max": 2.0}
    pmp = {"rho": 0.5, "complement": "frozen", "mask_max_steps": 5}
    cells = _cells([
        {"defense": "none", "defense_config": "{}"},
        {"defense": "trap2_l0", "defense_config": json.dumps(trap)},
        {"defense": "trap2_l0.1", "defense_config": json.dumps({**trap, "lambda": 0.1})},
        {"defense": "pmp_r0.5", "defense_config": json.dumps(pmp)},
    ])
    board = _board([("none", "merge", "full", 0.0, 1.0), ("trap2_l0", "merge", "full", 0.05, 0.99),
                    ("trap2_l0.1", "merge", "full", 0.4, 0.9), ("none", "finetune", "full", 0.0, 1.0),
                    ("pmp_r0.5", "finetune", "full", 0.3, 0.95)])
    written = plot_tradeoffs(cells, board, tmp_path)
    # the finetune track holds one PMP setting only: no curve to draw
    assert [path.name for path in written] == ["tradeoff_merge_llama.png"]
    assert written[0].read_bytes().startswith(b"\x89PNG")
