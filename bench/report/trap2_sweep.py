"""The Trap² λ × training-budget table of the paper run's README (DESIGN §9): per model, format and setting,
whether the trap formed, the half-scale loss against `none` and against λ = 0 at the same budget, utility
retention, attack success and the paper protocol's merged accuracy."""

from __future__ import annotations

import math

import pandas as pd

from bench.report.claims import adaptive_success, column_mean
from bench.report.readme import markdown_table
from bench.report.sweeps import paper_protocol_mask, protocol_method, trap2_settings


def trap2_sweep_rows(cells: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """Trap²'s λ × budget sweep, one row per model × format × setting: whether the trap formed, the release's
    half-scale loss against none's and against λ = 0 at the same budget (the control for everything but the
    trap term), utility retention, attack success and the paper protocol's merged accuracy."""
    settings = trap2_settings(cells)
    merge = cells[(cells["track"] == "merge") & (cells["status"] == "ok")]
    protocol = merge[paper_protocol_mask(merge) & (protocol_method(merge) == "task_arithmetic")]
    rows = []
    for setting in settings.itertuples(index=False):
        same_budget = settings[(settings["lambda_"] == 0) & (settings["steps"].fillna(-1) ==
                                                            (-1 if pd.isna(setting.steps) else setting.steps))]
        for (model, release_format), mine in merge[merge["defense"] == setting.defense].groupby(
                ["model", "release_format"], sort=True):
            control = merge[merge["defense"].isin(same_budget["defense"]) & (merge["model"] == model)
                            & (merge["release_format"] == release_format)]
            rows.append({
                "model": model, "format": release_format, "lambda_": setting.lambda_,
                "steps": "zoo" if pd.isna(setting.steps) else int(setting.steps),
                "defense": setting.defense,
                "trap_formed": column_mean(mine, "trap_formed"),
                "gap_vs_none": column_mean(mine, "trap_loss_gap"),
                "gap_vs_lambda0": column_mean(mine, "release_loss_s05") - column_mean(control, "release_loss_s05")
                if len(control) else math.nan,
                "utility_retention": column_mean(mine, "utility_retention"),
                "attack_success": adaptive_success(board, setting.defense, model, "merge", release_format)[0],
                "protocol_merged_acc": column_mean(protocol[(protocol["defense"] == setting.defense)
                                                            & (protocol["model"] == model)
                                                            & (protocol["release_format"] == release_format)],
                                                   "merged_acc"),
            })
    return pd.DataFrame(rows)


def trap2_sweep_section(cells: pd.DataFrame, board: pd.DataFrame) -> list[str]:
    table = trap2_sweep_rows(cells, board)
    if len(trap2_settings(cells)) < 2 or table.empty:
        return []
    table = table.assign(budget=table["steps"].map(lambda s: -1 if s == "zoo" else s)).sort_values(
        ["model", "format", "budget", "lambda_"], kind="mergesort")

    def number(value: float) -> str:
        return "–" if pd.isna(value) else f"{value:.3f}"

    rows = [[r.model, r.format, str(r.steps), f"{r.lambda_:g}", r.defense, number(r.trap_formed), number(r.gap_vs_none),
             number(r.gap_vs_lambda0), number(r.utility_retention), number(r.attack_success),
             number(r.protocol_merged_acc)] for r in table.itertuples(index=False)]
    return ["## Trap²: λ × training budget", "",
            "`trap formed`: share of releases whose answer loss at half scale exceeds none's by the margin; the",
            "gaps are that loss minus none's and minus λ = 0's at the same budget (nats per answer token; λ = 0",
            "runs Trap²'s code without the trap term); the last column is the paper protocol's 8-way task-",
            "arithmetic merged accuracy on T_p.", "",
            *markdown_table(["model", "format", "steps", "λ", "label", "trap formed", "gap vs none", "gap vs λ = 0",
                             "utility retention", "attack success", "protocol merged acc"], rows)]
