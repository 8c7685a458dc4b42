"""A run's README: a ranked table per track (worst case overall and per attack family, utility, flags),
the families without a valid attack, the controls, the weak attacks and every formula, generated from
the metric declarations of `bench.results.metrics`."""

from __future__ import annotations

import math

import pandas as pd

from bench.plugins import ATTACK_FAMILIES
from bench.results import (
    MATCH_KEY,
    PROVENANCE_COLUMNS,
    REFERENCE_DEFENSE,
    ValidityRule,
    family_gaps,
    formula_lines,
    validity_failures,
)
from bench.utility_report import readme_section

#: The files of a run directory (and of its published copy).
CELLS_FILE = "cells.csv"
LEADERBOARD_FILE = "leaderboard.csv"
README_FILE = "README.md"
PLOT_FILE = "utility_vs_attack.png"
RUN_FILES: tuple[str, ...] = (CELLS_FILE, LEADERBOARD_FILE, README_FILE, PLOT_FILE)
TRACKS: tuple[str, ...] = ("merge", "finetune")


def cell_text(text: object) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def number_text(mean: float, ci: float | None = None) -> str:
    """`0.512 ± 0.031`; the ± part is left out with one seed; – for no value."""
    if mean is None or math.isnan(mean):
        return "–"
    if ci is None or math.isnan(ci):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {ci:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell_text(value) for value in row) + " |" for row in rows]
    return lines


#: The headline columns of a track's table: (label, leaderboard column); families follow the worst case.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("utility", "utility"), ("utility retention", "utility_retention"),
    ("worst case", "worst_attack_success"),
    *((f"worst {family}", f"worst_{family}") for family in ATTACK_FAMILIES),
    ("bounded worst", "bounded_worst_attack_success"), ("mean", "mean_attack_success"),
    ("protection (worst)", "protection_worst"), ("worst unclipped", "worst_attack_success_raw"),
    ("old worst case", "legacy_worst_attack_success"),
)
TRACK_FAMILIES: dict[str, tuple[str, ...]] = {
    "merge": ("pinned", "rescaling", "aligning", "data"), "finetune": ("finetune",)}


def headline_columns(track: str) -> list[tuple[str, str]]:
    """The (label, column) pairs shown for `track`: the families that can attack it, plus the rest."""
    families = {f"worst_{family}" for family in ATTACK_FAMILIES if family not in TRACK_FAMILIES[track]}
    columns = [(label, column) for label, column in HEADLINE if column not in families]
    if track == "merge":
        columns.append(("trap formed", "trap_formed_rate"))
    return columns


def ranked(board: pd.DataFrame, track: str) -> pd.DataFrame:
    """A track's rows ranked for the headline: scored defenses by worst-case success (lower first), then
    `none`, invalid and n/a rows last."""
    rows = board[board["track"] == track].copy()
    rows["_order"] = rows["status"].map({"ok": 0, "invalid": 2, "n/a": 3}) + (rows["defense"] == REFERENCE_DEFENSE)
    return rows.sort_values(["_order", "worst_attack_success", "model", "release_format", "defense"],
                            kind="mergesort").drop(columns="_order")


def _track_table(board: pd.DataFrame, track: str) -> list[str]:
    columns = headline_columns(track)
    header = ["defense", "model", "format", *[label for label, _ in columns], "worst attack", "seeds",
              "valid / weak attacks", "flags"]
    rows = []
    for _, row in ranked(board, track).iterrows():
        if row["status"] != "ok":
            numbers = [row["status"]] * len(columns)
        else:
            numbers = [number_text(row[column], row[f"{column}_ci95"]) for _, column in columns]
        attack = f"{row['worst_attack']} ({row['worst_attack_family']})" if row["worst_attack"] else "–"
        rows.append([row["defense"], row["model"], row["release_format"], *numbers, attack, str(row["n_seeds"]),
                     f"{row['n_attacks_valid']} / {row['n_attacks_weak']}", row["flags"] or ""])
    return markdown_table(header, rows)


def architecture_columns(board: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The (track, architecture, format) columns of the architecture matrix, sorted."""
    return sorted({(r["track"], r["family"] or r["model"], r["release_format"]) for _, r in board.iterrows()})


def architecture_entries(board: pd.DataFrame) -> dict[str, dict[tuple[str, str, str], str]]:
    """Defense → (track, architecture, format) → the worst-case success where the defense applies, `N/A` where
    it declares it does not (e.g. a transformer-only re-parameterisation on Mamba), `invalid` where no attack
    was valid; a missing key: the grid did not run it."""
    entries: dict[str, dict[tuple[str, str, str], str]] = {}
    for _, row in board.iterrows():
        key = (row["track"], row["family"] or row["model"], row["release_format"])
        text = ("N/A" if row["status"] == "n/a" else row["status"] if row["status"] != "ok"
                else number_text(row["worst_attack_success"]))
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
    """Which attack configurations were weak on `none` (decided over all seeds), and why."""
    reference = cells[(cells["defense"] == REFERENCE_DEFENSE) & (cells["status"] == "ok") & cells["weak"]]
    if reference.empty:
        return ["No attack configuration was weak in this run."]
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
        "Every number can be recomputed by hand from `cells.csv`; clip(x, 0, 1) = min(max(x, 0), 1).",
        f"The *matching* `none` row and the *matching* control row (defense `control`) have the same ({match}):",
        "the same attack configuration on the unprotected release and on the control release (merge: the",
        "public base in place of the release, a zero update; finetune: a randomly initialised model of the",
        "same architecture). Empty numbers: the cell is not `ok`, or a matching row is missing.",
        "",
        *formula_lines(rule),
        "",
        "**Weak attacks** (DESIGN §6, `weak` and `weak_reason`): decided once per (track, model, format, task,",
        "members, attack configuration) on its `none` rows, as means over all seeds, and copied to every",
        "defense's cell of it. Merge: the expert gains ≥ "
        f"{rule.min_expert_gain:g} over the base; the none merge keeps ≥ {rule.min_kept_fraction:g} of *both* experts'",
        "own gains, `min((merged_acc − base_acc) / (utility − base_acc), mean_m (merged_m − base_m) / (expert_m −",
        f"base_m)) ≥ {rule.min_kept_fraction:g}`; and the release matters, `merged_acc − control_acc ≥ "
        f"{rule.min_release_margin:g}`. Finetune: `acc_before ≤ {rule.max_downstream_base:g}`, `gain_b1 ≥ "
        f"{rule.min_finetune_gain:g}` and `advantage ≥ {rule.min_scratch_margin:g}` (the base beats scratch).",
        "A weak attack stays in `cells.csv`, flagged, and is left out of every aggregate. A *valid* cell is",
        "ok, has both matching rows, is not weak and has a headline success.",
        "",
        "**Aggregates**: each number above is reduced per (seed, task) over the valid cells (every attack",
        "configuration and member set), averaged over tasks per seed, then over the n seeds: the mean and",
        "`*_ci95 = t(0.975, n − 1) · s / √n` (s with n − 1 in the denominator; empty with one seed). Seeds",
        "re-train every release, `none` included. `worst_attack` is the attack most often worst over",
        "(seed, task). Status `invalid`: cells ran but none is valid; `n/a`: the defense declares it does not",
        "apply. `none`'s success is 1 by construction: it is the scale everything is measured on.",
    ]


def render_readme(cells: pd.DataFrame, board: pd.DataFrame, title: str,
                  validity: ValidityRule | None = None) -> str:
    """The run's README: a ranked table per track, invalid families, controls, weak attacks, formulas."""
    validity = validity or ValidityRule()
    lines = [f"# {title}", "",
             "Lower attack success and higher protection are better. Merge track: success is *joint* (the",
             "merge must keep the protected task beyond the release-free control *and* the other members);",
             "finetune track: the area under the advantage-over-scratch curve. `cells.csv` holds one row per",
             "cell (controls included) with every knob and raw metric; `leaderboard.csv` one row per defense ×",
             "track × model × format. Numbers are means over seeds ± the half-width of a 95% Student-t interval.",
             f"Plot: `{PLOT_FILE}`.", ""]
    for track in TRACKS:
        if (board["track"] == track).any():
            lines += [f"## {track} track", "", *_track_table(board, track), ""]
    lines += ["## Architecture × format × defense", "",
              "Worst-case attack success per architecture; N/A: the defense declares it does not apply there.", "",
              *architecture_matrix(board), ""]
    gaps = family_gaps(cells) + validity_failures(cells)
    lines += ["## Families without a valid attack", "",
              *([f"- **{gap}**" for gap in gaps] or ["Every attack family of the grid has a valid attack."]), ""]
    lines += ["## Controls: what each attack reaches without the release", "",
              "Means over seeds and member sets, on the protected task (merge) or D (finetune).", "",
              *_controls_table(cells), ""]
    lines += readme_section(cells, markdown_table)
    lines += [*formulas(validity), "", "## Weak attack configurations", "", *_weak_table(cells), "",
              "## Versions", "", *_versions(board, cells), ""]
    return "\n".join(lines)
