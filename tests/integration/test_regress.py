"""`lockbench regress`, the CI gate: passes on a baseline of the same run, fails with a table naming the
row when a baseline makes a defense look stronger than its interval allows, when an attack weakens or
stops working against `none`, and when the run breaks the validity rule; a single cell's point value is
not judged alone.

Unit tests compare fakes.valid_raw_frame's synthetic run (hand-checked numbers, valid) with edited copies; the CLI
tests run it on a finished synthetic run directory (`--run-dir`) and end to end on a slice of micro
(plumbing only: micro scores 0, so there only utility edits and the validity rule can be seen).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fakes import MICRO_LLAMA_PRESET
from fakes import valid_raw_frame as raw_frame
from typer.testing import CliRunner

from bench.commands.cli import app
from bench.commands.regress import compare
from bench.report.leaderboard import write_run_outputs
from bench.results import ValidityRule, read_csv, score_cells, write_csv
from bench.zoo.build import Zoo

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def _scored(raw: pd.DataFrame | None = None, rule: ValidityRule | None = None) -> pd.DataFrame:
    return score_cells(raw_frame() if raw is None else raw, rule or ValidityRule())


def _where(cells: pd.DataFrame, **values: object) -> pd.Series:
    mask = pd.Series(True, index=cells.index)
    for key, value in values.items():
        mask &= cells[key] == value
    assert mask.sum() == 1, f"{values} matches {int(mask.sum())} rows"
    return mask


TRAP2_TA_0 = {"defense": "trap2", "attack": "ta", "seed": 0, "task": "add"}  # joint kept 1/3 (test_results)


def test_same_run_passes() -> None:
    cells = _scored()
    result = compare(cells, cells.copy(), tolerance=0.0)
    assert result.ok and result.regressions == [], result.regressions


def test_a_baseline_that_made_a_defense_look_stronger_fails_naming_the_row() -> None:
    current = _scored()
    assert current.loc[_where(current, **TRAP2_TA_0), "cell_value"].item() == pytest.approx(1 / 3)
    raw = raw_frame()
    row = _where(raw, **TRAP2_TA_0)
    raw.loc[row, "merged_acc"] = 0.28  # a flattered baseline: trap2's pick kept only 0.05 of the expert's gain
    result = compare(_scored(raw), current, tolerance=0.05)
    assert [(r.check, r.level, r.defense, r.track, r.model, r.release_format) for r in result.regressions] == [
        ("attack success rose", "defense", "trap2", "merge", "llama", "adapter")], result.regressions
    found = result.regressions[0]
    assert found.baseline == pytest.approx(0.05 / 0.75) and found.current == pytest.approx((1 / 3) / 0.75)
    assert "above the baseline's interval" in found.detail
    # within the tolerance it passes: trap2's pick keeps 0.03 less, its success moves by 0.03 / 0.75 = 0.04
    raw.loc[row, "merged_acc"] = 0.45 - 0.6 * 0.03
    assert compare(_scored(raw), current, tolerance=0.05).ok


def test_one_cells_point_value_is_not_judged_alone() -> None:
    """A cell that moves (as cells do on another CPU) while its row stays inside the baseline's interval
    passes: the gate judges rows against their spread, not cells against one machine's numbers."""
    current = _scored()
    raw = raw_frame()
    raw.loc[_where(raw, defense="trap2", attack="ties", seed=0), "merged_acc"] = 0.0  # not the attacker's pick
    assert compare(_scored(raw), current, tolerance=0.05).ok


def test_defense_level_success_and_utility() -> None:
    """A stronger attack in the current run raises trap2's headline; a lower utility is caught per row."""
    raw = raw_frame()
    # seed 0 (the live input): ta keeps 1/3 on T_p; keeping more of it lifts the pick's value to 0.583
    raw.loc[_where(raw, defense="trap2", attack="ta", seed=0, task="add"), "merged_acc"] = 0.6
    raw.loc[raw["defense"] == "pmp", "utility"] -= 0.2
    result = compare(_scored(), _scored(raw), tolerance=0.05)
    checks = {(r.check, r.level, r.defense) for r in result.regressions}
    assert checks == {("attack success rose", "defense", "trap2"), ("utility fell", "defense", "pmp")}, checks


def test_an_attack_that_stops_working_against_none_fails() -> None:
    raw = raw_frame()
    raw.loc[_where(raw, defense="none", attack="ta", seed=0), "merged_acc"] = 0.3  # keeps 0.08 of 0.6: void
    result = compare(_scored(), _scored(raw), tolerance=0.05)
    checks = {(r.check, r.defense, r.track) for r in result.regressions}
    assert ("attack stopped working against 'none'", "none", "merge") in checks
    assert ("every input turned void", "trap2", "merge") in checks  # nothing left to judge trap2 on
    assert ("validity rule broken", "", "merge") in checks


def test_a_weaker_attack_on_none_fails_before_it_turns_void() -> None:
    """Attacks that lose strength flatter every defense: the gate watches `none`'s pick against its interval,
    not only whether its inputs turn void."""
    raw = raw_frame()
    for seed in (0, 1):  # lora reaches 0.4 instead of 0.7 at half the budget: slower, the same at the end
        raw.loc[_where(raw, defense="none", attack="lora", seed=seed), "acc_b05"] = 0.4
    result = compare(_scored(), _scored(raw), tolerance=0.05)
    checks = {(r.check, r.defense, r.track) for r in result.regressions}
    # and every defense judged against it looks weaker for it: pmp's success rises with none's fall
    assert checks == {("attack weakened against 'none'", "none", "finetune"),
                      ("attack success rose", "pmp", "finetune")}, checks
    assert not any(r.check.startswith("attack stopped working") for r in result.regressions)


def test_validity_failures_fail_unless_allowed() -> None:
    rule = ValidityRule(min_finetune_gain=0.9)
    weak = _scored(rule=rule)
    baseline = weak.copy()
    result = compare(baseline, weak, rule=rule)
    assert [(r.check, r.track, r.model) for r in result.regressions] == [("validity rule broken", "finetune", "llama")]
    allowed = compare(baseline, weak, allow_invalid=True, rule=rule)
    assert allowed.ok and any("validity rule broken (allowed)" in note for note in allowed.notes)


def test_failed_missing_and_new_cells() -> None:
    baseline = _scored()
    raw = raw_frame()
    broken = _where(raw, defense="pmp", attack="full", seed=0, model="llama")
    raw.loc[broken, ["status", "error"]] = ["failed", "RuntimeError: out of memory"]
    raw.loc[broken, ["utility", "acc_before", "acc_after", "gain_b0125", "gain_b025", "gain_b05", "gain_b1"]] = None
    gone = _where(raw, defense="trap2", attack="ties", seed=1)
    extra = raw[_where(raw, defense="pmp", attack="lora", seed=0, model="llama")].assign(attack_key="k_new", attack="new")
    current = _scored(pd.concat([raw[~gone], extra], ignore_index=True))
    result = compare(baseline, current)
    checks = {(r.check, r.defense, r.attack, r.seed) for r in result.regressions}
    assert ("cell failed", "pmp", "full", "0") in checks
    assert ("cell missing from this run", "trap2", "ties", "1") in checks
    assert not any(r.attack == "new" for r in result.regressions)
    assert any("1 cells of this run are not in the baseline" in note for note in result.notes)


def test_cli_on_a_finished_run(tmp_path: Path) -> None:
    """`--run-dir`: the table names the regressed cell; the regressions are also written as CSV."""
    cells = _scored()
    run = tmp_path / "run"
    write_run_outputs(run, cells, "synthetic")
    same, edited = tmp_path / "same.csv", tmp_path / "edited.csv"
    result = runner.invoke(app, ["regress", "--run-dir", str(run), "--write-baseline", str(same)])
    assert result.exit_code == 0 and same.is_file(), result.output
    result = runner.invoke(app, ["regress", "--run-dir", str(run), "--baseline", str(same)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "no regression" in result.output

    stronger = read_csv(same, "cells")
    stronger.loc[_where(stronger, **TRAP2_TA_0), "merged_acc"] = 0.25  # at its control: keeps 0 (the run: 0.333)
    write_csv(stronger, edited, "cells")
    result = runner.invoke(app, ["regress", "--run-dir", str(run), "--baseline", str(edited), "--tolerance", "0.1"],
                           env=WIDE)
    assert result.exit_code == 1, result.output
    table = [line for line in result.output.splitlines() if "attack success rose" in line]
    assert len(table) == 1, result.output  # trap2's headline: its pick's value was 0 in the baseline
    for expected in ("defense", "trap2", "merge", "llama", "adapter", "0.000", "0.444"):
        assert expected in table[0], (expected, table[0])
    assert "1 regression(s)" in result.output
    saved = pd.read_csv(run / "regressions.csv", dtype=str, keep_default_na=False)
    assert saved[["check", "level", "defense", "attack", "seed"]].values.tolist() == [
        ["attack success rose", "defense", "trap2", "", ""]]


def test_cli_usage_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    result = runner.invoke(app, ["regress", "--baseline", str(missing), "--preset", "micro"])
    assert result.exit_code == 2
    assert f"baseline {missing} does not exist; make one with `lockbench regress --preset PRESET --write-baseline" \
        in " ".join(result.output.split())
    result = runner.invoke(app, ["regress", "--preset", "micro"])
    assert result.exit_code == 2 and "give --baseline CSV to compare, or --write-baseline" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("track,defense\nmerge,none\n")
    result = runner.invoke(app, ["regress", "--baseline", str(bad), "--preset", "micro"])
    assert result.exit_code == 2 and "missing columns" in result.output


MICRO_SLICE = MICRO_LLAMA_PRESET


@pytest.mark.slow
def test_regress_end_to_end_on_micro(micro_zoo: Zoo, tmp_path: Path) -> None:
    """Baseline from a micro run; the re-run passes on it, fails on the validity rule without
    --allow-invalid, and fails naming the row when the baseline claims `none` kept more utility."""
    preset = tmp_path / "micro-llama.yaml"
    preset.write_text(MICRO_SLICE)
    common = ["--preset", str(preset), "--root", str(micro_zoo.root)]
    baseline = tmp_path / "baseline.csv"
    refused = runner.invoke(app, ["regress", *common, "--out", str(tmp_path / "a"), "--write-baseline", str(baseline)])
    assert refused.exit_code == 1 and "refusing to write a baseline" in refused.output, refused.output
    made = runner.invoke(app, ["regress", *common, "--run-dir", str(tmp_path / "a"), "--write-baseline", str(baseline),
                               "--allow-invalid"])
    assert made.exit_code == 0, made.output
    assert len(read_csv(baseline, "cells")) == 6  # 3 cells and their 3 controls

    again = ["regress", *common, "--out", str(tmp_path / "b"), "--baseline", str(baseline)]
    passed = runner.invoke(app, [*again, "--allow-invalid"], env=WIDE)
    assert passed.exit_code == 0, passed.output
    assert "no regression" in passed.output
    invalid = runner.invoke(app, again, env=WIDE)
    assert invalid.exit_code == 1, invalid.output
    assert "validity rule broken" in invalid.output and "void on every input" in invalid.output

    stronger = read_csv(baseline, "cells")
    row = _where(stronger, defense="none", track="merge", release_format="full")
    assert stronger.loc[row, "utility"].item() < 0.45, "micro's utility is ~0: the edit must be a real change"
    stronger.loc[row, "utility"] = 0.5
    write_csv(stronger, tmp_path / "stronger.csv", "cells")
    failed = runner.invoke(app, ["regress", *common, "--run-dir", str(tmp_path / "b"), "--baseline",
                                 str(tmp_path / "stronger.csv"), "--allow-invalid"], env=WIDE)
    assert failed.exit_code == 1, failed.output
    lines = [line for line in failed.output.splitlines() if "utility fell" in line]
    assert len(lines) == 1, failed.output
    for expected in ("defense", "none", "merge", "llama", "full", "0.500", "below the baseline's interval"):
        assert expected in lines[0], (expected, lines[0])
