"""Tests of bench.scoring and bench.leaderboard on hand-built raw frames with hand-computed numbers.

The synthetic run: two defenses per track (merge: none, trap2; finetune: none, pmp), two attacks that
count plus one weak attack (merge: avg; finetune: lora on seed 1), two seeds, one failed cell, one cell
without a none reference, and a defense that declares an architecture unsupported (n/a).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.leaderboard import PLOT_FILE, RUN_FILES, PublishError, publish, write_run_outputs
from bench.scoring import (
    CELL_COLUMNS,
    DTYPES,
    LEADERBOARD_COLUMNS,
    RAW_COLUMNS,
    TIMING_COLUMNS,
    SchemaError,
    ValidityRule,
    aggregate,
    conform_frame,
    gain_auc,
    mean_ci95,
    read_csv,
    score_cells,
    seed_summaries,
    sort_frame,
    validate_frame,
    validity_failures,
    write_csv,
)

BASE_MERGE = 0.2
BEFORE = 0.1
PROVENANCE = {
    "lockbench_version": "0.1.0", "torch_version": "2.13.0", "transformers_version": "5.23.0",
    "peft_version": "0.21.0", "mergekit_version": "0.1.5", "lm_eval_version": "0.4.13", "zoo_hash": "zoo123",
}


def _row(**values: object) -> dict:
    row: dict[str, object] = {name: None for name in RAW_COLUMNS}
    row.update(defense_config="{}", model="llama", family="llama", attack_config="{}", status="ok", error="",
               n_members=0, attack_seconds=1.5, defense_seconds=2.5, **PROVENANCE)
    row.update(values)
    return row


def merge_row(defense: str, attack: str, seed: int, utility: float | None, merged: float | None,
              members: tuple[float, float] = (0.6, 0.8), **values: object) -> dict:
    return _row(**{**dict(
        track="merge", defense=defense, release_format="adapter", task="add", members="reverse", n_members=1,
        attack=attack, attack_key=f"k_{attack}", seed=seed, merge_method=attack, merge_weights="[1.0, 1.0]",
        merge_normalize=False, merge_lambda=1.0, merge_rescale=True, utility=utility, base_acc=BASE_MERGE,
        merged_acc=merged, merged_acc_members=members[0], members_expert_acc=members[1], attack_steps=0,
        attack_examples=64), **values})


def finetune_row(defense: str, attack: str, seed: int, utility: float | None,
                 gains: tuple[float, float, float, float] | None, **values: object) -> dict:
    g = gains or (None, None, None, None)
    return _row(**{**dict(
        track="finetune", defense=defense, release_format="full", task="sort", members="", attack=attack,
        attack_key=f"k_{attack}", seed=seed, ft_method=attack, ft_lr=1e-3, ft_steps=300, utility=utility,
        base_acc=BEFORE, acc_before=BEFORE if gains else None, acc_after=BEFORE + g[3] if gains else None,
        gain_b0125=g[0], gain_b025=g[1], gain_b05=g[2], gain_b1=g[3], attack_steps=300, attack_examples=256),
        **values})


def raw_frame() -> pd.DataFrame:
    rows = [
        # merge track, none: base 0.2, expert 0.8 → the avg merges keep < half the expert's gain: weak.
        merge_row("none", "ta", 0, 0.8, 0.6), merge_row("none", "ties", 0, 0.8, 0.7),
        merge_row("none", "avg", 0, 0.8, 0.4), merge_row("none", "dare", 0, 0.8, 0.7),
        merge_row("none", "ta", 1, 0.8, 0.65), merge_row("none", "ties", 1, 0.8, 0.6),
        merge_row("none", "avg", 1, 0.8, 0.3),
        # merge track, trap2
        merge_row("trap2", "ta", 0, 0.76, 0.3),
        merge_row("trap2", "ties", 0, 0.76, 0.95, members=(0.2, 0.8)),  # breaks the members floor
        merge_row("trap2", "avg", 0, 0.76, 0.1),
        merge_row("trap2", "dare", 0, None, None, status="failed", error="RuntimeError: boom"),
        merge_row("trap2", "ta", 1, 0.72, 0.38), merge_row("trap2", "ties", 1, 0.72, 0.2),
        merge_row("trap2", "avg", 1, 0.72, 0.9),  # weak: its success (clipped 1) must not count
        merge_row("trap2", "orphan", 1, 0.72, 0.99),  # no none row to normalise by
        # finetune track, none
        finetune_row("none", "lora", 0, 0.5, (0.1, 0.2, 0.3, 0.4)),
        finetune_row("none", "full", 0, 0.5, (0.2, 0.4, 0.5, 0.6)),
        finetune_row("none", "lora", 1, 0.5, (0.05, 0.1, 0.15, 0.2)),  # gains 0.2 < 0.3: weak
        finetune_row("none", "full", 1, 0.5, (0.1, 0.3, 0.5, 0.5)),
        # finetune track, pmp
        finetune_row("pmp", "lora", 0, 0.45, (0.0, 0.0, 0.1, 0.2)),
        finetune_row("pmp", "full", 0, 0.45, (0.05, 0.1, 0.2, 0.45)),
        finetune_row("pmp", "lora", 1, 0.4, (0.2, 0.3, 0.4, 0.5)),
        finetune_row("pmp", "full", 1, 0.4, (0.3, 0.5, 0.6, 0.6)),
        # pmp does not support mamba
        *(finetune_row("pmp", attack, seed, None, None, model="mamba", family="mamba", status="n/a",
                       error="pmp: architecture not supported")
          for attack in ("lora", "full") for seed in (0, 1)),
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return score_cells(raw_frame(), ValidityRule())


@pytest.fixture(scope="module")
def board(cells: pd.DataFrame) -> pd.DataFrame:
    return aggregate(cells)


def cell(cells: pd.DataFrame, track: str, defense: str, attack: str, seed: int,
         model: str = "llama") -> pd.Series:
    selected = cells[(cells["track"] == track) & (cells["defense"] == defense) & (cells["attack"] == attack)
                     & (cells["seed"] == seed) & (cells["model"] == model)]
    assert len(selected) == 1
    return selected.iloc[0]


def board_row(board: pd.DataFrame, track: str, defense: str, model: str = "llama") -> pd.Series:
    selected = board[(board["track"] == track) & (board["defense"] == defense) & (board["model"] == model)]
    assert len(selected) == 1
    return selected.iloc[0]


def auc(g: tuple[float, float, float, float]) -> float:
    return float(np.trapezoid([0.0, *g], [0.0, 0.125, 0.25, 0.5, 1.0]))


def ci95(values: list[float]) -> float:
    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


# ----------------------------------------------------------------------------- cells


def test_gain_auc_is_the_trapezoid_through_the_origin() -> None:
    gains = (0.1, 0.25, 0.3, 0.7)
    frame = pd.DataFrame([dict(zip(("gain_b0125", "gain_b025", "gain_b05", "gain_b1"), gains, strict=True))])
    assert gain_auc(frame).iloc[0] == pytest.approx(auc(gains))
    assert gain_auc(frame).iloc[0] == pytest.approx(0.125 * 0.1 + 0.1875 * 0.25 + 0.375 * 0.3 + 0.25 * 0.7)


def test_cells_have_schema_columns_and_dtypes(cells: pd.DataFrame) -> None:
    assert tuple(cells.columns) == CELL_COLUMNS
    assert {name: str(dtype) for name, dtype in cells.dtypes.items()} == {n: DTYPES[n] for n in CELL_COLUMNS}
    assert len(cells) == len(raw_frame())


def test_merge_cell_is_normalised_by_the_matching_none_row(cells: pd.DataFrame) -> None:
    row = cell(cells, "merge", "trap2", "ta", 0)
    assert row["reference_found"]
    assert row["utility_none"] == pytest.approx(0.8)
    assert row["merged_acc_none"] == pytest.approx(0.6)
    assert row["reference_gain"] == pytest.approx(0.6 - 0.2)
    assert row["utility_retention"] == pytest.approx(0.76 / 0.8)
    assert row["attack_success"] == pytest.approx((0.3 - 0.2) / (0.6 - 0.2))
    assert row["protection"] == pytest.approx(0.76 / 0.8 * (1 - 0.25))
    assert math.isnan(row["attack_success_auc"]) and math.isnan(row["gain_auc"])
    # seed 1 is normalised by seed 1's none row, not seed 0's
    assert cell(cells, "merge", "trap2", "ta", 1)["attack_success"] == pytest.approx(0.18 / 0.45)
    # the none row measures itself: success exactly 1, retention 1
    none = cell(cells, "merge", "none", "ties", 0)
    assert none["attack_success"] == 1.0 and none["utility_retention"] == 1.0 and none["protection"] == 0.0


def test_finetune_cell_is_normalised_by_the_matching_none_row(cells: pd.DataFrame) -> None:
    row = cell(cells, "finetune", "pmp", "full", 0)
    assert row["gain_none"] == pytest.approx(0.6)
    assert row["reference_gain"] == pytest.approx(0.6)
    assert row["attack_success"] == pytest.approx(0.45 / 0.6)
    assert row["gain_auc"] == pytest.approx(auc((0.05, 0.1, 0.2, 0.45)))
    assert row["gain_auc_none"] == pytest.approx(auc((0.2, 0.4, 0.5, 0.6)))
    assert row["attack_success_auc"] == pytest.approx(auc((0.05, 0.1, 0.2, 0.45)) / auc((0.2, 0.4, 0.5, 0.6)))
    assert row["utility_retention"] == pytest.approx(0.9)
    assert row["protection"] == pytest.approx(0.9 * (1 - 0.75))
    assert row["members_floor_ok"]
    assert math.isnan(row["merged_acc_none"])


def test_attack_success_is_clipped_to_unit_interval(cells: pd.DataFrame) -> None:
    assert cell(cells, "merge", "trap2", "ties", 0)["attack_success"] == 1.0  # 0.75 / 0.5 = 1.5
    assert cell(cells, "merge", "trap2", "avg", 0)["attack_success"] == 0.0  # below the base
    pmp = cell(cells, "finetune", "pmp", "full", 1)
    assert pmp["attack_success"] == 1.0  # 0.6 / 0.5
    assert pmp["attack_success_auc"] == 1.0  # 0.50625 / 0.38125
    assert cells["attack_success"].dropna().between(0, 1).all()


def test_weak_attacks_are_flagged_per_configuration(cells: pd.DataFrame) -> None:
    weak = cells.set_index(["track", "defense", "attack", "seed", "model"])["weak"]
    for defense in ("none", "trap2"):
        for seed in (0, 1):
            assert weak[("merge", defense, "avg", seed, "llama")]  # keeps 0.2 (0.1) of a 0.6 gain
            assert not weak[("merge", defense, "ta", seed, "llama")]
    for defense in ("none", "pmp"):
        assert weak[("finetune", defense, "lora", 1, "llama")]  # none gains 0.2 < 0.3
        assert not weak[("finetune", defense, "lora", 0, "llama")]
    # weak attacks keep their numbers in the cells, flagged
    assert cell(cells, "merge", "trap2", "avg", 1)["attack_success"] == 1.0
    # the threshold is the rule's: at 0.3 the seed-0 avg merge (0.2 ≥ 0.3 × 0.6) passes
    relaxed = score_cells(raw_frame(), ValidityRule(min_kept_fraction=0.3))
    assert not cell(relaxed, "merge", "trap2", "avg", 0)["weak"]
    assert cell(relaxed, "merge", "trap2", "avg", 1)["weak"]


def test_nonpositive_reference_gain_gives_no_success_and_is_weak() -> None:
    raw = pd.DataFrame([merge_row("none", "ta", 0, 0.8, 0.2), merge_row("trap2", "ta", 0, 0.7, 0.5)])
    scored = score_cells(raw, ValidityRule())
    assert scored["weak"].all()
    assert scored["attack_success"].isna().all()
    assert scored["utility_retention"].tolist() == pytest.approx([1.0, 0.875])


def test_failed_and_unmatched_cells_keep_nan(cells: pd.DataFrame) -> None:
    failed = cell(cells, "merge", "trap2", "dare", 0)
    assert failed["reference_found"] and not failed["weak"]
    assert failed[["attack_success", "utility_retention", "protection", "reference_gain"]].isna().all()
    orphan = cell(cells, "merge", "trap2", "orphan", 1)
    assert not orphan["reference_found"] and not orphan["weak"]
    assert orphan[["attack_success", "utility_retention", "protection"]].isna().all()
    na = cell(cells, "finetune", "pmp", "full", 0, model="mamba")
    assert na["status"] == "n/a" and math.isnan(na["attack_success"])


def test_members_floor(cells: pd.DataFrame) -> None:
    assert not cell(cells, "merge", "trap2", "ties", 0)["members_floor_ok"]  # 0.2 < 0.5 × 0.8
    assert cell(cells, "merge", "trap2", "ta", 0)["members_floor_ok"]  # 0.6 ≥ 0.4
    strict = score_cells(raw_frame(), ValidityRule(members_floor=0.8))
    assert not cell(strict, "merge", "trap2", "ta", 0)["members_floor_ok"]


def test_duplicate_cells_are_refused() -> None:
    raw = pd.DataFrame([merge_row("none", "ta", 0, 0.8, 0.6), merge_row("none", "ta", 0, 0.8, 0.6)])
    with pytest.raises(SchemaError, match="cell key"):
        score_cells(raw, ValidityRule())


# ----------------------------------------------------------------------------- aggregates


def test_aggregate_has_one_row_per_group(board: pd.DataFrame) -> None:
    assert tuple(board.columns) == LEADERBOARD_COLUMNS
    groups = set(zip(board["defense"], board["track"], board["model"], board["release_format"], strict=True))
    assert groups == {("none", "merge", "llama", "adapter"), ("trap2", "merge", "llama", "adapter"),
                      ("none", "finetune", "llama", "full"), ("pmp", "finetune", "llama", "full"),
                      ("pmp", "finetune", "mamba", "full")}


def test_per_seed_numbers_exclude_weak_failed_and_unmatched(cells: pd.DataFrame) -> None:
    seeds = seed_summaries(cells)
    trap2 = seeds[(seeds["defense"] == "trap2")].set_index("seed")
    # seed 1: ta 0.4, ties 0.0; the weak avg (1.0) and the unreferenced orphan do not count
    assert trap2.loc[1, "worst_attack_success"] == pytest.approx(0.4)
    assert trap2.loc[1, "mean_attack_success"] == pytest.approx(0.2)
    assert trap2.loc[0, "worst_attack_success"] == 1.0
    assert trap2.loc[0, "bounded_worst_attack_success"] == pytest.approx(0.25)  # ties breaks the floor
    assert trap2.loc[0, "protection_worst"] == pytest.approx(0.0)
    assert trap2.loc[1, "protection_worst"] == pytest.approx(0.9 * (1 - 0.4))


def test_merge_aggregate_matches_hand_computation(board: pd.DataFrame) -> None:
    row = board_row(board, "merge", "trap2")
    assert row["status"] == "ok"
    assert row["worst_attack_success"] == pytest.approx(0.7)
    assert row["worst_attack_success_ci95"] == pytest.approx(ci95([1.0, 0.4]))
    assert row["bounded_worst_attack_success"] == pytest.approx((0.25 + 0.4) / 2)
    assert row["bounded_worst_attack_success_ci95"] == pytest.approx(ci95([0.25, 0.4]))
    assert row["mean_attack_success"] == pytest.approx((0.625 + 0.2) / 2)
    assert row["utility"] == pytest.approx(0.74)
    assert row["utility_ci95"] == pytest.approx(ci95([0.76, 0.72]))
    assert row["utility_retention"] == pytest.approx((0.95 + 0.9) / 2)
    assert row["protection_worst"] == pytest.approx((0.0 + 0.54) / 2)
    assert row["protection_worst_ci95"] == pytest.approx(ci95([0.0, 0.54]))
    assert math.isnan(row["worst_attack_success_auc"])
    # seeds disagree (ties, ta): the tie goes to the higher worst success
    assert row["worst_attack"] == "ties" and row["worst_attack_key"] == "k_ties"
    assert (row["n_seeds"], row["n_tasks"], row["n_attacks_valid"], row["n_attacks_weak"]) == (2, 1, 2, 1)
    assert (row["n_cells_failed"], row["n_cells_unmatched"]) == (1, 1)
    assert row["zoo_hash"] == "zoo123" and row["mergekit_version"] == "0.1.5"


def test_finetune_aggregate_and_reference(board: pd.DataFrame) -> None:
    pmp = board_row(board, "finetune", "pmp")
    assert pmp["worst_attack_success"] == pytest.approx((0.75 + 1.0) / 2)
    assert pmp["worst_attack_success_ci95"] == pytest.approx(ci95([0.75, 1.0]))
    assert pmp["bounded_worst_attack_success"] == pytest.approx(pmp["worst_attack_success"])
    assert pmp["mean_attack_success"] == pytest.approx((0.625 + 1.0) / 2)
    assert pmp["utility_retention"] == pytest.approx(0.85)
    assert pmp["protection_worst"] == pytest.approx((0.9 * 0.25 + 0.0) / 2)
    auc0 = max(auc((0, 0, 0.1, 0.2)) / auc((0.1, 0.2, 0.3, 0.4)),
               auc((0.05, 0.1, 0.2, 0.45)) / auc((0.2, 0.4, 0.5, 0.6)))
    assert pmp["worst_attack_success_auc"] == pytest.approx((auc0 + 1.0) / 2)
    assert pmp["worst_attack"] == "full"
    assert (pmp["n_attacks_valid"], pmp["n_attacks_weak"]) == (2, 1)
    for track in ("merge", "finetune"):
        none = board_row(board, track, "none")
        assert none["worst_attack_success"] == 1.0 and none["mean_attack_success"] == 1.0
        assert none["utility_retention"] == 1.0 and none["protection_worst"] == 0.0
        assert none["worst_attack_success_ci95"] == 0.0


def test_unsupported_architecture_is_na(board: pd.DataFrame) -> None:
    row = board_row(board, "finetune", "pmp", model="mamba")
    assert row["status"] == "n/a"
    assert row[["worst_attack_success", "utility", "protection_worst"]].isna().all()
    assert (row["n_seeds"], row["n_attacks_valid"], row["worst_attack"]) == (0, 0, "")


def test_single_seed_has_no_interval() -> None:
    raw = raw_frame()
    board = aggregate(score_cells(raw[raw["seed"] == 0], ValidityRule()))
    row = board_row(board, "merge", "trap2")
    assert row["worst_attack_success"] == 1.0 and math.isnan(row["worst_attack_success_ci95"])
    assert mean_ci95([0.3]) == (0.3, pytest.approx(float("nan"), nan_ok=True))
    assert mean_ci95([0.2, 0.4, 0.9])[1] == pytest.approx(ci95([0.2, 0.4, 0.9]))


def test_tasks_are_averaged_before_seeds() -> None:
    rows = []
    for task, merged in (("add", 0.6), ("sort", 0.4)):
        rows.append(merge_row("none", "ta", 0, 0.8, 0.7, task=task))
        rows.append(merge_row("x", "ta", 0, 0.8, merged, task=task))
    board = aggregate(score_cells(pd.DataFrame(rows), ValidityRule()))
    row = board_row(board, "merge", "x")
    assert row["worst_attack_success"] == pytest.approx((0.8 + 0.4) / 2)
    assert row["n_tasks"] == 2 and row["n_seeds"] == 1


# ----------------------------------------------------------------------------- schemas and CSV


def test_missing_and_unexpected_columns_are_schema_errors() -> None:
    raw = raw_frame().drop(columns=["utility"])
    with pytest.raises(SchemaError, match=r"missing columns \['utility'\]"):
        validate_frame(raw, "raw")
    with pytest.raises(SchemaError, match="unexpected columns"):
        validate_frame(raw_frame().assign(surprise=1), "raw")


def test_out_of_range_and_wrong_dtype_are_schema_errors(cells: pd.DataFrame) -> None:
    raw = raw_frame()
    raw.loc[0, "utility"] = 1.5
    with pytest.raises(SchemaError, match="utility has 1 values outside"):
        score_cells(raw, ValidityRule())
    bad = cells.copy()
    bad.loc[0, "attack_success"] = 1.2
    with pytest.raises(SchemaError, match="attack_success"):
        validate_frame(bad, "cells")
    raw = raw_frame()
    raw["seed"] = raw["seed"].astype(str)
    with pytest.raises(SchemaError, match="seed has dtype"):
        validate_frame(raw, "raw")
    raw = raw_frame()
    raw.loc[0, "status"] = "done"
    with pytest.raises(SchemaError, match="status has values outside"):
        validate_frame(raw, "raw")


def test_csv_round_trip_is_exact(tmp_path: Path, cells: pd.DataFrame, board: pd.DataFrame) -> None:
    for frame, kind in ((raw_frame(), "raw"), (cells, "cells"), (board, "leaderboard")):
        path = tmp_path / f"{kind}.csv"
        write_csv(frame, path, kind)
        back = read_csv(path, kind)
        pd.testing.assert_frame_equal(back, sort_frame(conform_frame(frame, kind), kind), check_exact=True)
        write_csv(back, tmp_path / "again.csv", kind)
        assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_round_trip_keeps_awkward_values(tmp_path: Path) -> None:
    awkward = 'line1\nline2, "q"'
    raw = pd.DataFrame([merge_row("none", "ta", 0, 0.1 + 0.2, 1 / 3, error="", attack_config='{"a": [1, 2]}'),
                        merge_row("none", "ties", 0, None, None, status="failed", error=awkward)])
    write_csv(raw, tmp_path / "raw.csv", "raw")
    back = read_csv(tmp_path / "raw.csv", "raw")
    assert back.loc[0, "utility"] == 0.1 + 0.2 and back.loc[0, "merged_acc"] == 1 / 3
    assert back.loc[1, "error"] == awkward and back.loc[0, "error"] == ""
    assert back.loc[0, "attack_config"] == '{"a": [1, 2]}'
    assert back["merge_normalize"].tolist() == [False, False] and str(back["ft_steps"].dtype) == "Int64"


def test_read_csv_rejects_a_tampered_file(tmp_path: Path, cells: pd.DataFrame) -> None:
    path = tmp_path / "cells.csv"
    write_csv(cells, path, "cells")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, "attack_success"] = "2.0"
    frame.to_csv(path, index=False)
    with pytest.raises(SchemaError, match="attack_success"):
        read_csv(path, "cells")


def test_timing_columns_are_the_only_run_to_run_differences(cells: pd.DataFrame) -> None:
    assert set(TIMING_COLUMNS) <= set(RAW_COLUMNS)
    again = score_cells(raw_frame().assign(attack_seconds=9.0, defense_seconds=8.0), ValidityRule())
    pd.testing.assert_frame_equal(cells.drop(columns=list(TIMING_COLUMNS)),
                                  again.drop(columns=list(TIMING_COLUMNS)))


# ----------------------------------------------------------------------------- run outputs and publishing


def test_run_outputs(tmp_path: Path, cells: pd.DataFrame, board: pd.DataFrame) -> None:
    write_run_outputs(tmp_path / "run", cells, board, "synthetic run")
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == sorted(RUN_FILES)
    assert (tmp_path / "run" / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (tmp_path / "run" / "README.md").read_text()
    assert readme.startswith("# synthetic run")
    for formula in ("utility_retention = utility / utility_none",
                    "attack_success = clip((merged_acc − base_acc) / reference_gain, 0, 1)",
                    "reference_gain = merged_acc_none − base_acc_none",
                    "attack_success = clip(gain_b1 / gain_none, 0, 1)",
                    "attack_success_auc = clip(gain_auc / gain_auc_none, 0, 1)",
                    "protection = utility_retention × (1 − attack_success)",
                    "0.125·gain_b0125 + 0.1875·gain_b025 + 0.375·gain_b05",
                    "t(0.975, n − 1) · s / √n", "gain_none < 0.3", "0.5 × (utility_none − base_acc_none)"):
        assert formula in readme, formula
    table_rows = [line for line in readme.splitlines() if line.startswith("| ")]
    for defense, model in (("none", "llama"), ("trap2", "llama"), ("pmp", "llama"), ("pmp", "mamba")):
        assert any(line.startswith(f"| {defense} | {model} |") for line in table_rows), defense
    assert "0.700 ± " in readme  # trap2's worst case
    assert "zoo123" in readme and "k_avg" in readme


def test_publish_refuses_a_partial_or_invalid_run(tmp_path: Path, cells: pd.DataFrame,
                                                  board: pd.DataFrame) -> None:
    run = tmp_path / "run"
    write_run_outputs(run, cells, board, "synthetic run")
    (run / "README.md").unlink()
    with pytest.raises(PublishError, match="missing README.md"):
        publish(run, tmp_path / "leaderboard")
    write_run_outputs(run, cells, board, "synthetic run")
    frame = pd.read_csv(run / "leaderboard.csv", dtype=str, keep_default_na=False)
    frame.loc[0, "track"] = "merger"
    frame.to_csv(run / "leaderboard.csv", index=False)
    with pytest.raises(PublishError, match="track has values outside"):
        publish(run, tmp_path / "leaderboard")
    all_weak = score_cells(raw_frame(), ValidityRule(min_finetune_gain=0.9))
    assert validity_failures(cells) == []
    assert validity_failures(all_weak) == [
        "finetune track, llama: every attack is weak against 'none' (full, lora)"]
    write_run_outputs(run, all_weak, aggregate(all_weak), "synthetic run")
    with pytest.raises(PublishError, match="validity rule broken"):
        publish(run, tmp_path / "leaderboard")
    write_run_outputs(run, cells, board, "synthetic run")
    write_csv(aggregate(cells[cells["seed"] == 0]), run / "leaderboard.csv", "leaderboard")
    with pytest.raises(PublishError, match="not the aggregate"):
        publish(run, tmp_path / "leaderboard")
    assert not (tmp_path / "leaderboard" / "run").exists()


def test_publish_copies_a_full_run_and_indexes_it(tmp_path: Path, cells: pd.DataFrame,
                                                  board: pd.DataFrame) -> None:
    run = tmp_path / "runs" / "2026-01-01-default"
    write_run_outputs(run, cells, board, "synthetic run")
    target = publish(run, tmp_path / "leaderboard")
    assert target == tmp_path / "leaderboard" / "2026-01-01-default"
    for name in RUN_FILES:
        assert (target / name).read_bytes() == (run / name).read_bytes()
    publish(run, tmp_path / "leaderboard", name="second")  # republishing under another name
    publish(run, tmp_path / "leaderboard", name="second")  # and replacing an earlier copy
    index = (tmp_path / "leaderboard" / "README.md").read_text()
    assert "[2026-01-01-default](2026-01-01-default/README.md)" in index
    assert "[second](second/README.md)" in index
    assert "synthetic run" in index and "trap2" in index
    assert sorted(p.name for p in (tmp_path / "leaderboard").iterdir()) == ["2026-01-01-default", "README.md",
                                                                          "index.html", "second"]
