"""The run plot: utility retention against worst-case attack success (`leaderboard/<run>/plot.png`)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.plugins import TRACKS
from bench.runtime.storage import replace_atomically


def plot_utility_vs_attack(board: pd.DataFrame, path: Path) -> None:
    """Utility retention vs attack success (the headline), one point per defense × model × format, a panel per
    track. Colour names the defense, the marker the model, a hollow marker the adapter format; legends say
    which, so labels never overlap where points cluster (they do near success 1). Error bars are the 95%
    bootstrap intervals (`_lo`, `_hi`). Uses the Agg canvas directly: no global backend change."""

    tracks = [track for track in TRACKS if (board["track"] == track).any()] or ["merge"]
    figure = Figure(figsize=(6.5 * len(tracks) + 2.5, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    scored = board[(board["status"] == "ok") & board["attack_success"].notna()
                   & board["utility_retention"].notna()]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(sorted(scored["defense"].unique()))}
    markers = {model: "osD^v<>p"[i % 8] for i, model in enumerate(sorted(scored["model"].unique()))}
    for axes, track in zip(figure.subplots(1, len(tracks), squeeze=False)[0], tracks, strict=True):
        rows = scored[scored["track"] == track]
        for _, row in rows.iterrows():
            x, y = row["attack_success"], row["utility_retention"]
            colour = colours[row["defense"]]
            axes.errorbar(x, y, xerr=_bar(row, "attack_success"), yerr=_bar(row, "utility_retention"),
                          fmt=markers[row["model"]], capsize=3, color=colour, markersize=8, alpha=0.85,
                          markerfacecolor="none" if row["release_format"] == "adapter" else colour)
        if rows.empty:
            axes.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=axes.transAxes)
        top = max(1.1, float(rows["utility_retention"].max()) + 0.1) if not rows.empty else 1.1
        axes.set(xlim=(-0.05, 1.1), ylim=(0.0, top), title=f"{track} track",
                 xlabel="attack success, the attacker's pick (lower is better)", ylabel="utility retention")
        axes.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour, marker="o", linestyle="", label=name) for name, colour in colours.items()]
    handles += [Line2D([], [], color="#444", marker=marker, linestyle="", label=model) for model, marker in markers.items()]
    handles += [Line2D([], [], color="#444", marker="o", linestyle="", label="full weights"),
                Line2D([], [], color="#444", marker="o", markerfacecolor="none", linestyle="", label="adapter")]
    figure.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    replace_atomically(path, lambda scratch: figure.savefig(scratch, format="png", dpi=110))


def _bar(row: pd.Series, column: str) -> list[list[float]]:
    """matplotlib's asymmetric error bar from the row's interval; none without one."""
    value, low, high = row[column], row[f"{column}_lo"], row[f"{column}_hi"]
    if math.isnan(low) or math.isnan(high):
        return [[0.0], [0.0]]
    return [[max(value - low, 0.0)], [max(high - value, 0.0)]]
