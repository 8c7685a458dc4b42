"""Tests of bench.results and the run outputs on the hand-built synthetic run of `fakes.raw_frame`.

Every expected number is computed by hand in the test.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from fakes import merge_row, raw_frame

from bench.report.leaderboard import PLOT_FILE, RUN_FILES, PublishError, publish, write_run_outputs
from bench.results import (
    CELL_COLUMNS,
    CELL_METRICS,
    DTYPES,
    LEADERBOARD_COLUMNS,
    TIMING_COLUMNS,
    SchemaError,
    ValidityRule,
    aggregate,
    conform_frame,
    family_gaps,
    formula_lines,
    pick_inputs,
    read_csv,
    score_cells,
    sort_frame,
    validity_failures,
    write_csv,
)


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return score_cells(raw_frame(), ValidityRule())


@pytest.fixture(scope="module")
def board(cells: pd.DataFrame) -> pd.DataFrame:
    return aggregate(cells)


def cell(cells: pd.DataFrame, defense: str, attack: str, seed: int, model: str = "llama", task: str = "") -> pd.Series:
    rows = cells[(cells["defense"] == defense) & (cells["attack"] == attack) & (cells["seed"] == seed)
                 & (cells["model"] == model) & ((cells["task"] == task) if task else cells["task"].isin(["add", "sort"]))]
    assert len(rows) == 1
    return rows.iloc[0]


def board_row(board: pd.DataFrame, track: str, defense: str, model: str = "llama") -> pd.Series:
    rows = board[(board["track"] == track) & (board["defense"] == defense) & (board["model"] == model)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_cells_have_schema_columns_and_dtypes(cells: pd.DataFrame) -> None:
    assert list(cells.columns) == list(CELL_COLUMNS)
    assert {name: str(cells[name].dtype) for name in cells.columns} == {name: DTYPES[name] for name in cells.columns}


def test_joint_kept_uses_the_control_the_fixed_expert_and_the_other_member(cells: pd.DataFrame) -> None:
    first = cell(cells, "trap2", "ta", 0)
    assert first["control_found"] and first["reference_found"] and first["control_acc"] == pytest.approx(0.25)
    # fixed reference: none's expert of the same seed (utility 0.8) over the base (0.2), never none's merge
    assert first["utility_none"] == pytest.approx(0.8)
    assert first["kept_protected"] == pytest.approx((0.45 - 0.25) / (0.8 - 0.2))
    assert first["kept_members"] == pytest.approx((0.6 - 0.1) / (0.9 - 0.1))
    assert first["joint_kept"] == pytest.approx(1 / 3) and first["cell_value"] == first["joint_kept"]
    # Trap²'s own metric: merged / expert on T_p (none's utility is the expert's) and on the other member
    assert first["paper_normalised_acc"] == pytest.approx((0.45 / 0.8 + 0.6 / 0.9) / 2)
    second = cell(cells, "trap2", "ta", 1)
    assert second["kept_protected"] == pytest.approx((0.8 - 0.25) / 0.6)
    assert second["joint_kept"] == pytest.approx(0.1 / 0.8)
    # the same configuration on none is one input's value, not the scale: none's own joint
    assert cell(cells, "none", "ta", 1)["joint_kept"] == pytest.approx(min(0.35 / 0.6, 0.3 / 0.8))


def test_the_attackers_objective_uses_its_own_split_and_references(cells: pd.DataFrame) -> None:
    # attacker_val: T_p's gain over the release-free control's (0.25) against the *release* it holds (0.76), the
    # members against the public expert (0.9): the quantity of the test metric, with references it can compute
    row = cell(cells, "trap2", "ta", 0)
    assert row["val_objective"] == pytest.approx(min((0.45 - 0.25) / (0.76 - 0.2), (0.6 - 0.1) / (0.9 - 0.1)))
    # D's attacker_val accuracy over the from-scratch control's
    assert cell(cells, "pmp", "lora", 0)["val_objective"] == pytest.approx(0.9 - 0.2)
    assert math.isnan(cell(cells, "trap2", "orphan", 1)["cell_value"])  # no control: nothing to pick


def test_a_release_that_destroys_the_other_member_keeps_nothing_jointly(cells: pd.DataFrame) -> None:
    destroyed = score_cells(pd.concat([raw_frame(), pd.DataFrame([merge_row("noisy", "ta", 0, 0.8, 0.7, 0.1)])]),
                            ValidityRule())
    row = cell(destroyed, "noisy", "ta", 0)
    assert row["kept_protected"] == pytest.approx(0.45 / 0.6) and row["kept_members"] == 0.0
    assert row["joint_kept"] == 0.0


def test_trap_formed_against_none_at_half_scale(cells: pd.DataFrame) -> None:
    assert cell(cells, "trap2", "ta", 0)["trap_loss_gap"] == pytest.approx(0.3)
    assert bool(cell(cells, "trap2", "ta", 0)["trap_formed"]) is True
    assert bool(cell(cells, "trap2", "ta", 1)["trap_formed"]) is False
    assert bool(cell(cells, "none", "ta", 0)["trap_formed"]) is False
    assert pd.isna(cell(cells, "control", "ta", 0)["trap_formed"])


AREA_NONE_LORA = 0.0625 * 0.1 + 0.125 * 0.3 + 0.1875 * 0.45 + 0.375 * 0.6 + 0.25 * 0.7
AREA_PMP_LORA = 0.0625 * 0.05 + 0.125 * 0.1 + 0.1875 * 0.15 + 0.375 * 0.4 + 0.25 * 0.7
AREA_PMP_FULL = 0.0625 * 0.05 + 0.125 * 0.1 + 0.1875 * 0.2 + 0.375 * 0.2 + 0.25 * 0.8


def test_finetune_advantage_over_scratch_and_its_area(cells: pd.DataFrame) -> None:
    none, pmp = cell(cells, "none", "lora", 0), cell(cells, "pmp", "lora", 0)
    assert none["acc_after_scratch"] == 0.2 and none["advantage"] == pytest.approx(0.7)
    assert none["advantage_auc"] == pytest.approx(AREA_NONE_LORA) and pmp["advantage_auc"] == pytest.approx(AREA_PMP_LORA)
    assert pmp["cell_value"] == pmp["advantage_auc"]


def test_weak_is_a_diagnostic_decided_once_over_seeds_with_a_reason(cells: pd.DataFrame) -> None:
    assert not cell(cells, "none", "ta", 1)["weak"]  # 0.375 alone, but the configuration's mean is 0.5625
    ties = cells[cells["attack"] == "ties"]
    assert ties["weak"].all() and (ties["weak_reason"] == "joint kept fraction 0.00 < 0.5").all()
    full = cells[cells["attack"] == "full"]
    assert full[full["status"] == "ok"]["weak"].all()
    assert "gain 0.20 < 0.3" in full["weak_reason"].iloc[0]
    assert not pd.isna(cell(cells, "trap2", "ties", 0)["cell_value"]), "a weak configuration keeps its value"


def test_merge_picks_and_aggregate_match_hand_computation(cells: pd.DataFrame, board: pd.DataFrame) -> None:
    picks = pick_inputs(cells)
    overall = picks[(picks["pick_family"] == "all") & (picks["model"] == "llama") & (picks["track"] == "merge")]
    trap = overall[overall["defense"] == "trap2"].set_index("seed")
    # seed 0: the attacker's val picks `ta` (0.45 vs ties' 0.0); none's pick is `ta` at 0.75
    assert trap.loc[0, "pick_attack"] == "ta" and trap.loc[0, "none_pick_value"] == pytest.approx(0.75)
    assert trap.loc[0, "success"] == pytest.approx((1 / 3) / 0.75) and not trap.loc[0, "void"]
    # seed 1: none's pick keeps 0.375 < 0.5 jointly: the input is void (not averaged), and said why
    assert trap.loc[1, "void"] and "0.38 < 0.5" in trap.loc[1, "void_reason"]
    row = board_row(board, "merge", "trap2")
    assert row["attack_success"] == pytest.approx((1 / 3) / 0.75) == row["worst_attack_success"]
    assert row["success_pinned"] == pytest.approx((1 / 3) / 0.75) and math.isnan(row["success_rescaling"])
    assert row["pick_value"] == pytest.approx(1 / 3) and row["pick_value_none"] == pytest.approx(0.75)
    assert row["n_inputs"] == 2 and row["n_inputs_void"] == 1 and row["n_inputs_broken"] == 0
    assert row["verdict"] == "holds" and row["utility_retention"] == pytest.approx((0.95 + 0.9) / 2)
    assert row["trap_formed_rate"] == pytest.approx(0.5) and row["n_cells_failed"] == 1
    assert "rescaling: void on every input (none's pick keeps 0.00 < 0.5 jointly)" in row["flags"]
    assert "no trap formed in 50% of releases" in row["flags"]
    assert board_row(board, "merge", "none")["attack_success"] == pytest.approx(1.0)
    assert board_row(board, "merge", "none")["verdict"] == "reference"


def test_invalid_groups_hold_no_numbers_and_are_named(cells: pd.DataFrame, board: pd.DataFrame) -> None:
    row = board_row(board, "merge", "trap2", model="gpt2")
    assert row["status"] == "invalid" and math.isnan(row["attack_success"])
    assert validity_failures(cells) == ["merge track, gpt2: 'none' is void on every input "
                                        "(none's pick keeps 0.00 < 0.5 jointly)"]
    gaps = family_gaps(cells)
    assert any("llama/adapter: 'rescaling' void on every input" in gap for gap in gaps)
    assert not any("finetune track, llama/full" in gap for gap in gaps)


def test_finetune_aggregate_and_controls_are_not_ranked(board: pd.DataFrame) -> None:
    row = board_row(board, "finetune", "pmp")
    # both configurations score 0.9 on attacker_val: the tie goes to the first attack name, `full`
    assert row["attack_success"] == pytest.approx(AREA_PMP_FULL / AREA_NONE_LORA)
    assert row["oracle_attack_success"] == pytest.approx(AREA_PMP_LORA / AREA_NONE_LORA)
    assert row["utility_retention"] == pytest.approx(0.9) and row["n_seeds"] == 2
    assert board_row(board, "finetune", "pmp", model="mamba")["status"] == "n/a"
    assert "control" not in set(board["defense"])


def test_every_metric_has_a_formula_in_the_readme() -> None:
    text = "\n".join(formula_lines(ValidityRule()))
    for metric in CELL_METRICS:
        assert f"`{metric.name}`" in text
    for name in ("attack_success", "worst_attack_success", "success_rescaling", "trap_formed_rate"):
        assert f"`{name}`" in text
    assert "0.1" in text and "{rule" not in text


def test_duplicate_cells_are_refused() -> None:
    raw = pd.concat([raw_frame(), raw_frame().iloc[:1]], ignore_index=True)
    with pytest.raises(SchemaError, match="share a cell key"):
        score_cells(raw, ValidityRule())


# ----------------------------------------------------------------------------- schemas and CSV


def test_missing_and_unexpected_columns_are_schema_errors() -> None:
    with pytest.raises(SchemaError, match=r"missing columns \['utility'\]"):
        conform_frame(raw_frame().drop(columns=["utility"]), "raw")
    with pytest.raises(SchemaError, match="unexpected columns"):
        conform_frame(raw_frame().assign(surprise=1), "raw")


def test_out_of_range_and_wrong_values_are_schema_errors(cells: pd.DataFrame) -> None:
    raw = raw_frame()
    raw.loc[0, "utility"] = 1.5
    with pytest.raises(SchemaError, match="utility has 1 values outside"):
        score_cells(raw, ValidityRule())
    bad = cells.copy()
    bad.loc[0, "control_acc"] = 1.2
    with pytest.raises(SchemaError, match="control_acc"):
        conform_frame(bad, "cells")
    raw = raw_frame()
    raw.loc[0, "attack_family"] = "sneaky"
    with pytest.raises(SchemaError, match="attack_family has values outside"):
        conform_frame(raw, "raw")


def test_csv_round_trip_is_exact(tmp_path: Path, cells: pd.DataFrame, board: pd.DataFrame) -> None:
    picks = pick_inputs(cells)
    for frame, kind in ((raw_frame(), "raw"), (cells, "cells"), (board, "leaderboard"), (picks, "picks")):
        path = tmp_path / f"{kind}.csv"
        write_csv(frame, path, kind)
        back = read_csv(path, kind)
        pd.testing.assert_frame_equal(back, sort_frame(conform_frame(frame, kind), kind), check_exact=True)
        write_csv(back, tmp_path / "again.csv", kind)
        assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()
    assert list(board.columns) == list(LEADERBOARD_COLUMNS)


def test_timing_columns_are_the_only_run_to_run_differences(cells: pd.DataFrame) -> None:
    again = score_cells(raw_frame().assign(attack_seconds=9.0, defense_seconds=8.0), ValidityRule())
    pd.testing.assert_frame_equal(cells.drop(columns=list(TIMING_COLUMNS)), again.drop(columns=list(TIMING_COLUMNS)))


# ----------------------------------------------------------------------------- run outputs and publishing


def test_run_outputs_and_readme(tmp_path: Path, cells: pd.DataFrame, board: pd.DataFrame) -> None:
    write_run_outputs(tmp_path / "run", cells, "synthetic run")
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == sorted(RUN_FILES)
    assert (tmp_path / "run" / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (tmp_path / "run" / "README.md").read_text()
    assert readme.startswith("# synthetic run")
    assert "`kept_protected` (merge): `(merged_acc − control_acc) / (utility_none − base_acc)`" in readme
    assert "**merge track, gpt2: 'none' is void on every input" in readme
    assert "2.5 and 97.5 percentiles" in readme and "zoo123" in readme
    assert "## Sensitivity to the void-bar" in readme
    merge_lines = [line for line in readme.split("## merge track")[1].split("##")[0].splitlines()
                   if line.startswith("| ")][1:]
    assert merge_lines[0].startswith("| trap2 | llama |")  # ranked: scored defenses first, none after them
    assert any(line.startswith("| trap2 | gpt2 | adapter | – | invalid") for line in merge_lines)
    matrix = readme.split("## Architecture × format × defense")[1].split("\n## ")[0]
    header = next(line for line in matrix.splitlines() if line.startswith("| defense"))
    assert "finetune: mamba/full" in header and "merge: llama/adapter" in header
    def cells_of(line: str) -> list[str]:
        return [part.strip() for part in line.strip("| ").split(" | ")]

    columns = cells_of(header)
    pmp = cells_of(next(line for line in matrix.splitlines() if line.startswith("| pmp |")))
    assert pmp[columns.index("finetune: mamba/full")] == "N/A", "declared n/a shows as N/A"
    assert pmp[columns.index("merge: llama/adapter")] == "–", "pmp has no merge row: not run"
    trap2 = cells_of(next(line for line in matrix.splitlines() if line.startswith("| trap2 |")))
    assert trap2[columns.index("merge: gpt2/adapter")] == "invalid"


def test_publish_refuses_partial_or_inconsistent_runs(tmp_path: Path, cells: pd.DataFrame,
                                                      board: pd.DataFrame) -> None:
    run = tmp_path / "run"
    write_run_outputs(run, cells, "synthetic run")
    (run / "README.md").unlink()
    with pytest.raises(PublishError, match="missing README.md"):
        publish(run, tmp_path / "leaderboard")
    write_run_outputs(run, cells, "synthetic run")
    write_csv(aggregate(cells[cells["seed"] == 0]), run / "leaderboard.csv", "leaderboard")
    with pytest.raises(PublishError, match="not the aggregate"):
        publish(run, tmp_path / "leaderboard")
    assert not (tmp_path / "leaderboard" / "run").exists()


def test_publish_copies_a_full_run_and_indexes_it(tmp_path: Path, cells: pd.DataFrame, board: pd.DataFrame) -> None:
    run = tmp_path / "runs" / "2026-01-01-default"
    write_run_outputs(run, cells, "synthetic run")
    target = publish(run, tmp_path / "leaderboard")
    for name in RUN_FILES:
        assert (target / name).read_bytes() == (run / name).read_bytes()
    index = (tmp_path / "leaderboard" / "README.md").read_text()
    assert "[2026-01-01-default](2026-01-01-default/README.md)" in index and "trap2" in index


def test_publish_puts_the_hand_written_findings_into_the_readme(tmp_path: Path, cells: pd.DataFrame,
                                                               board: pd.DataFrame) -> None:
    run = tmp_path / "runs" / "default"
    write_run_outputs(run, cells, "synthetic run")
    (tmp_path / "leaderboard" / "findings").mkdir(parents=True)
    (tmp_path / "leaderboard" / "findings" / "default.md").write_text("Trap² now loses to the joint metric.\n")
    readme = (publish(run, tmp_path / "leaderboard") / "README.md").read_text()
    assert readme.index("## Findings") < readme.index("Trap² now loses") < readme.index("## merge track")
    assert "findings" not in (tmp_path / "leaderboard" / "README.md").read_text()  # not listed as a run


def test_the_joint_success_is_empty_where_the_protected_task_has_nothing_to_keep() -> None:
    from bench.results.metrics import joint_kept

    nan = math.nan
    frame = pd.DataFrame({"kept_protected": [0.4, 0.4, nan, nan], "kept_members": [0.7, nan, 0.6, nan]})
    # the smaller share; T_p alone without a member share; never the members' share alone
    assert joint_kept(frame).tolist()[:2] == [0.4, 0.4]
    assert joint_kept(frame).isna().tolist() == [False, False, True, True]


def test_the_validity_rules_kept_fraction_follows_the_same_joint_rule() -> None:
    from bench.results.normalise import joint_kept_vs_experts

    # T_p: (0.5 − 0.2) / (0.8 − 0.2) = 0.5; the member: (0.5 − 0.1) / (0.9 − 0.1) = 0.5
    assert joint_kept_vs_experts(pd.Series(merge_row("none", "ta", 0, 0.8, 0.5, 0.5))) == pytest.approx(0.5)
    # the T_p expert gained nothing over the base: not measurable, never the member's share alone
    assert math.isnan(joint_kept_vs_experts(pd.Series(merge_row("none", "ta", 0, 0.2, 0.5, 0.5))))


def test_a_setting_trained_longer_is_judged_against_the_control_of_its_own_budget() -> None:
    """DESIGN §5, equal budgets: Trap² at 800 steps is compared with λ = 0 at 800 steps (its
    `budget_reference`), not with `none`'s expert trained at the zoo's budget; the rest against `none`."""
    rows = [merge_row("control", "ta", 0, 0.2, 0.25, 0.8, defense_config='{"control": "release-free"}'),
            merge_row("none", "ta", 0, 0.8, 0.7, 0.7, loss_half=0.5),
            merge_row("trap2_l0_s800", "ta", 0, 0.9, 0.7, 0.7, loss_half=0.65, budget_reference="trap2_l0_s800"),
            merge_row("trap2_l0.1_s800", "ta", 0, 0.72, 0.3, 0.7, loss_half=0.7, budget_reference="trap2_l0_s800"),
            merge_row("trap2", "ta", 0, 0.76, 0.3, 0.7, loss_half=0.7)]
    cells = score_cells(pd.DataFrame(rows), ValidityRule())
    control = cell(cells, "trap2_l0_s800", "ta", 0)
    assert control["utility_retention"] == pytest.approx(1.0) and control["trap_loss_gap"] == pytest.approx(0.0)
    assert not control["trap_formed"], "λ = 0 trained longer has no trap term: it cannot count as formed"
    trapped = cell(cells, "trap2_l0.1_s800", "ta", 0)
    assert trapped["utility_reference"] == pytest.approx(0.9)
    assert trapped["utility_retention"] == pytest.approx(0.72 / 0.9)
    assert trapped["trap_loss_gap"] == pytest.approx(0.7 - 0.65) and not trapped["trap_formed"]
    plain = cell(cells, "trap2", "ta", 0)  # the zoo's budget: against none
    assert plain["utility_retention"] == pytest.approx(0.76 / 0.8) and plain["trap_loss_gap"] == pytest.approx(0.2)
    # kept_protected keeps its fixed reference, none's expert of the same seed, whatever the budget
    assert trapped["kept_protected"] == pytest.approx((0.3 - 0.25) / (0.8 - 0.2))


def test_the_paper_grid_names_lambda_zero_at_the_same_budget() -> None:
    from bench.harness.grid import budget_references
    from bench.presets import load_preset

    grid = load_preset("paper").grid
    assert grid is not None
    assert budget_references(grid) == {"trap2_l0_s800": "trap2_l0_s800", "trap2_l0.01_s800": "trap2_l0_s800",
                                       "trap2_l0.1_s800": "trap2_l0_s800"}


def test_gpt2_style_pmp_rows_run_paper_s_own_settings() -> None:
    """`paper-gpt2` holds GPT-2-style's rows of paper's PMP claims: the same PMP settings, fine-tuning attacks,
    downstream tasks, seeds and validity bar as `paper`, its own model only, and no merge track."""
    from bench.presets import load_preset

    paper, gpt2 = load_preset("paper"), load_preset("paper-gpt2")
    assert paper.grid is not None and gpt2.grid is not None
    assert gpt2.grid.models == ["gpt2"] and not gpt2.grid.merge_attacks and gpt2.grid.expert_models == []
    assert [d for d in paper.grid.defenses if d.name in ("none", "pmp")] == gpt2.grid.defenses
    assert gpt2.grid.finetune_attacks == paper.grid.finetune_attacks and gpt2.grid.seeds == paper.grid.seeds
    assert gpt2.zoo.downstream_tasks == paper.zoo.downstream_tasks and gpt2.validity == paper.validity
    # standalone (an extending preset's zoo would hold Llama-style too): every zoo setting but the model is paper's
    assert list(gpt2.zoo.models) == ["gpt2"]
    assert gpt2.zoo.model_dump(exclude={"models"}) == paper.zoo.model_dump(exclude={"models"})


def test_an_attack_that_needs_no_release_is_not_picked_for_what_the_release_gives() -> None:
    """A heal that reaches T_p from the attacker's own data (its release-free control scores as high) looks best
    on raw attacker_val accuracy, but the release adds nothing to it; the pick estimates the metric itself on
    attacker_val (gain over the control), so it takes the merge that uses the release (measured on `paper`:
    a 300-step full heal reached 0.995 on T_p with the release and 0.945 without it)."""
    from fakes import merge_row

    from bench.results import pick_inputs, score_cells

    rows = []
    for defense, heal, merge in (("control", 0.93, 0.25), ("none", 0.95, 0.7)):
        config = '{"control": "release-free"}' if defense == "control" else "{}"
        rows += [merge_row(defense, "heal", 0, 0.8, heal, 0.85, defense_config=config),
                 merge_row(defense, "ta", 0, 0.8, merge, 0.85, defense_config=config)]
    picks = pick_inputs(score_cells(pd.DataFrame(rows)))
    chosen = picks[(picks["defense"] == "none") & (picks["pick_family"] == "all")].iloc[0]
    assert chosen["pick_attack"] == "ta"
    assert chosen["pick_value"] == pytest.approx((0.7 - 0.25) / (0.8 - 0.2))
