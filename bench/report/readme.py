"""A run's README: a ranked table per track (the headline with its interval and verdict, the worst case, the
oracle, each family, utility, flags), the sensitivity table, the void families, the controls and every
formula, generated from the metric declarations of `bench.results.metrics`."""

from __future__ import annotations

import math

import pandas as pd

from bench.plugins import ATTACK_FAMILIES, TRACKS
from bench.report.utility import readme_section
from bench.results import (
    MATCH_KEY,
    PROVENANCE_COLUMNS,
    REFERENCE_DEFENSE,
    ValidityRule,
    family_gaps,
    formula_lines,
    validity_failures,
)

#: The files of a run directory (and of its published copy).
CELLS_FILE = "cells.csv"
LEADERBOARD_FILE = "leaderboard.csv"
README_FILE = "README.md"
PICKS_FILE = "picks.csv"
SENSITIVITY_FILE = "sensitivity.csv"
RULE_FILE = "validity.json"
PLOT_FILE = "utility_vs_attack.png"
RUN_FILES: tuple[str, ...] = (CELLS_FILE, LEADERBOARD_FILE, PICKS_FILE, SENSITIVITY_FILE, RULE_FILE, README_FILE,
                              PLOT_FILE)


def cell_text(text: object) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def number_text(value: float, low: float | None = None, high: float | None = None) -> str:
    """`0.512 [0.431, 0.604]`; the interval is left out when there is none; – for no value."""
    if value is None or math.isnan(value):
        return "–"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def metric_text(row: pd.Series, column: str) -> str:
    """A leaderboard number with its bootstrap interval (`<column>_lo`, `<column>_hi`)."""
    return number_text(row[column], row.get(f"{column}_lo"), row.get(f"{column}_hi"))


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell_text(value) for value in row) + " |" for row in rows]
    return lines


#: The columns of a track's table: (label, leaderboard column); families follow the headline.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("attack success (mean)", "attack_success"), ("worst case (max)", "worst_attack_success"),
    ("oracle (upper bound)", "oracle_attack_success"),
    *((f"{family}", f"success_{family}") for family in ATTACK_FAMILIES),
    ("pick value", "pick_value"), ("none's pick value", "pick_value_none"),
    ("utility", "utility"), ("utility retention", "utility_retention"), ("protection", "protection"),
)
TRACK_FAMILIES: dict[str, tuple[str, ...]] = {
    "merge": ("pinned", "rescaling", "aligning", "data"), "finetune": ("finetune",)}


def headline_columns(track: str) -> list[tuple[str, str]]:
    """The (label, column) pairs shown for `track`: the families that can attack it, plus the rest."""
    families = {f"success_{family}" for family in ATTACK_FAMILIES if family not in TRACK_FAMILIES[track]}
    columns = [(label, column) for label, column in HEADLINE if column not in families]
    if track == "merge":
        columns.append(("trap formed", "trap_formed_rate"))
    return columns


def ranked(board: pd.DataFrame, track: str) -> pd.DataFrame:
    """A track's rows ranked within this run: scored defenses by their headline (lower first), then `none`,
    invalid and n/a rows last."""
    rows = board[board["track"] == track].copy()
    rows["_order"] = rows["status"].map({"ok": 0, "invalid": 2, "n/a": 3}) + (rows["defense"] == REFERENCE_DEFENSE)
    return rows.sort_values(["_order", "attack_success", "model", "release_format", "defense"],
                            kind="mergesort").drop(columns="_order")


def inputs_text(row: pd.Series) -> str:
    """`broken k / live n (v void)`: how many of the row's inputs the attacker's pick broke."""
    live = int(row["n_inputs"]) - int(row["n_inputs_void"])
    return f"{int(row['n_inputs_broken'])} / {live} ({int(row['n_inputs_void'])} void)"


def _track_table(board: pd.DataFrame, track: str) -> list[str]:
    columns = headline_columns(track)
    header = ["defense", "model", "format", "verdict", *[label for label, _ in columns], "broken / inputs",
              "worst input's pick", "seeds", "flags"]
    rows = []
    for _, row in ranked(board, track).iterrows():
        if row["status"] != "ok":
            numbers = [row["status"]] * len(columns)
        else:
            numbers = [metric_text(row, column) for _, column in columns]
        attack = f"{row['worst_attack']} ({row['worst_attack_family']})" if row["worst_attack"] else "–"
        rows.append([row["defense"], row["model"], row["release_format"], row["verdict"] or "–", *numbers,
                     inputs_text(row), attack, str(row["n_seeds"]), row["flags"] or ""])
    return markdown_table(header, rows)


def sensitivity_table(table: pd.DataFrame, track: str = "merge") -> list[str]:
    """The headline and verdict of every defense row at each void-bar (DESIGN §5)."""
    rows = table[table["track"] == track]
    if rows.empty:
        return ["No rows."]
    bars = sorted(rows["bar"].unique())
    out = []
    for key, group in rows.groupby(["defense", "model", "release_format"], sort=True):
        by_bar = {bar: group[group["bar"] == bar].iloc[0] for bar in bars if (group["bar"] == bar).any()}
        verdicts = {r["verdict"] for r in by_bar.values() if r["verdict"]}
        cells = [f"{number_text(r['attack_success'], r['attack_success_lo'], r['attack_success_hi'])} "
                 f"{r['verdict'] or '–'} (n={r['n_inputs_live']})" for r in by_bar.values()]
        out.append([*key, *cells, "threshold-sensitive" if len(verdicts) > 1 else "stable"])
    return markdown_table(["defense", "model", "format", *(f"bar {bar:g}" for bar in bars), "verdict across bars"],
                          out)


def architecture_columns(board: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The (track, architecture, format) columns of the architecture matrix, sorted."""
    return sorted({(r["track"], r["family"] or r["model"], r["release_format"]) for _, r in board.iterrows()})


def architecture_entries(board: pd.DataFrame) -> dict[str, dict[tuple[str, str, str], str]]:
    """Defense → (track, architecture, format) → the headline success where the defense applies, `N/A` where
    it declares it does not (e.g. a transformer-only re-parameterisation on Mamba), `invalid` where no attack
    was valid; a missing key: the grid did not run it."""
    entries: dict[str, dict[tuple[str, str, str], str]] = {}
    for _, row in board.iterrows():
        key = (row["track"], row["family"] or row["model"], row["release_format"])
        text = ("N/A" if row["status"] == "n/a" else row["status"] if row["status"] != "ok"
                else number_text(row["attack_success"]))
        entries.setdefault(row["defense"], {})[key] = text
    return dict(sorted(entries.items(), key=lambda item: (item[0] == REFERENCE_DEFENSE, item[0])))


def architecture_matrix(board: pd.DataFrame) -> list[str]:
    """The matrix as a Markdown table (`–`: not run)."""
    if board.empty:
        return ["No rows."]
    columns = architecture_columns(board)
    return markdown_table(["defense", *(f"{track}: {family}/{fmt}" for track, family, fmt in columns)],
                          [[defense, *(found.get(column, "–") for column in columns)]
                           for defense, found in architecture_entries(board).items()])


def _weak_table(cells: pd.DataFrame) -> list[str]:
    """Which attack configurations keep little against `none` on average over seeds (a diagnostic: they
    still count, and the attacker's pick decides whether they matter)."""
    reference = cells[(cells["defense"] == REFERENCE_DEFENSE) & (cells["status"] == "ok") & cells["weak"]]
    if reference.empty:
        return ["No attack configuration was weak on `none` in this run."]
    keys = ["track", "model", "release_format", "attack", "attack_family", "task", "members", "weak_reason"]
    found = reference.drop_duplicates(keys)[keys]
    return markdown_table(["track", "model", "format", "attack", "family", "task", "members", "why (mean over seeds)"],
                  [[str(row[k]) for k in keys] for _, row in found.iterrows()])


def _controls_table(cells: pd.DataFrame) -> list[str]:
    """What each attack reaches without the release (the control) beside what it reaches with `none`'s."""
    reference = cells[(cells["defense"] == REFERENCE_DEFENSE) & (cells["status"] == "ok")]
    if reference.empty:
        return ["No control rows."]
    rows = []
    for (track, model, release_format, attack, task), group in reference.groupby(
            ["track", "model", "release_format", "attack", "task"], sort=True):
        if track == "merge":
            numbers = [group["base_acc"].mean(), group["control_acc"].mean(), group["merged_acc"].mean()]
        else:
            numbers = [group["acc_before_scratch"].mean(), group["acc_after_scratch"].mean(), group["acc_after"].mean()]
        rows.append([track, model, release_format, attack, task, *(number_text(v) for v in numbers)])
    return markdown_table(["track", "model", "format", "attack", "task", "base (merge) / scratch before (finetune)",
                   "control", "with none's release"], rows)


def _versions(board: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    source = board if not board.empty else cells
    lines = []
    for name in PROVENANCE_COLUMNS:
        values = sorted({part for value in source[name].tolist() for part in value.split(";") if part})
        label = name.removesuffix("_version").replace("_", " ") if name != "zoo_hash" else "zoo hash"
        lines.append(f"- {label}: {', '.join(values) if values else 'unknown'}")
    return lines


def formulas(validity: ValidityRule) -> list[str]:
    """The formulas of every number, generated from the metric declarations (bench.results.metrics)."""
    match = ", ".join(MATCH_KEY)
    rule = validity
    return [
        "## Formulas",
        "",
        "Every number can be recomputed by hand from `cells.csv` and `picks.csv`; clip(x, 0, 1) = min(max(x, 0), 1).",
        f"The *matching* control row (defense `control`) has the same ({match}): the same attack",
        "configuration on the control release (merge: the public base in place of the release, a zero update;",
        "finetune: a randomly initialised model of the same architecture). `none`'s release of the same",
        "(track, model, format, task, seed) is the fixed reference of every configuration. Empty numbers: the",
        "cell is not `ok`, or a matching row is missing.",
        "",
        *formula_lines(rule),
        "",
        "**Intervals**: each resample draws the seeds with replacement and, per task, the test examples with",
        "replacement, the same examples for every model scored on that task (paired: a defense and `none`",
        "are resampled together); the attacker's pick is held as chosen on `attacker_val`. `_lo` and `_hi`",
        f"are the 2.5 and 97.5 percentiles over {rule.bootstrap_iters} resamples (seed "
        f"{rule.bootstrap_seed}). **Verdict**: `broken` when the headline's interval lies at or above "
        f"{rule.broken_line:g}, `holds` when it lies below, `partly` when it straddles it; `below_none` when",
        "its upper end is below 1 (the defense lowers what the attacker keeps, beyond the resampling noise).",
        "",
        "**Weak configurations** (`weak`, `weak_reason` in `cells.csv`) are a diagnostic, decided once per",
        "(track, model, format, task, members, attack configuration) on its `none` rows as means over seeds:",
        f"merge, the expert gains ≥ {rule.min_expert_gain:g}, the none merge keeps ≥ {rule.min_kept_fraction:g}"
        " jointly (`joint_kept`) and beats its control on T_p by ≥ "
        f"{rule.min_release_margin:g}; finetune, `acc_before ≤ {rule.max_downstream_base:g}`, `gain_b1 ≥ "
        f"{rule.min_finetune_gain:g}`, `advantage ≥ {rule.min_scratch_margin:g}`. A weak configuration still",
        "counts: nothing is dropped before the attacker picks. Status `invalid`: every input is void; `n/a`:",
        "the defense declares it does not apply. `none`'s success is 1 by construction; its absolute",
        "`pick_value` says how much of the experts a merge keeps at all.",
    ]


def render_readme(cells: pd.DataFrame, board: pd.DataFrame, title: str, validity: ValidityRule | None = None,
                  sensitivity: pd.DataFrame | None = None) -> str:
    """The run's README: a ranked table per track, the sensitivity table, void families, controls, formulas."""
    validity = validity or ValidityRule()
    lines = [f"# {title}", "",
             "Lower attack success and higher protection are better. Per input (defense, model, format, task,",
             "partners, seed) the attacker picks the configuration that scores best on its own `attacker_val`",
             "split; its test value (merge: the joint share of the experts' gains it keeps beyond the",
             "release-free control; finetune: the area under the advantage-over-scratch curve) divided by",
             "`none`'s pick on the same input is the success. Rows are means over the non-void inputs with 95%",
             "paired-bootstrap intervals over seeds and test examples, ranked within this run only. `cells.csv`",
             "holds every cell, `picks.csv` every pick, `sensitivity.csv` the headline at each void-bar.",
             f"Plot: `{PLOT_FILE}`.", ""]
    for track in TRACKS:
        if (board["track"] == track).any():
            lines += [f"## {track} track", "", *_track_table(board, track), ""]
    if sensitivity is not None and (sensitivity["track"] == "merge").any():
        lines += ["## Sensitivity to the void-bar (merge track)", "",
                  "The headline when an input counts only if `none`'s pick keeps at least the bar jointly; a",
                  "verdict that changes across the bars is threshold-sensitive.", "",
                  *sensitivity_table(sensitivity), ""]
    lines += ["## Architecture × format × defense", "",
              "Headline attack success per architecture; N/A: the defense declares it does not apply there.", "",
              *architecture_matrix(board), ""]
    gaps = family_gaps(cells, validity) + validity_failures(cells, validity)
    lines += ["## Void families", "",
              *([f"- **{gap}**" for gap in gaps] or ["No attack family is void on every input."]), ""]
    lines += ["## Controls: what each attack reaches without the release", "",
              "Means over seeds and member sets, on the protected task (merge) or D (finetune).", "",
              *_controls_table(cells), ""]
    lines += readme_section(cells, markdown_table)
    lines += [*formulas(validity), "", "## Configurations weak on none (diagnostic)", "", *_weak_table(cells), "",
              "## Versions", "", *_versions(board, cells), ""]
    return "\n".join(lines)
