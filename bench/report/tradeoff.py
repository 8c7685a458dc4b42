"""Trade-off plots of the papers' strength sweeps (DESIGN §9): utility retention against
protection, one point per defense setting, one PNG per track × architecture (`tradeoff_<track>_<model>.png`).
A line joins the settings of one sweep (Trap²'s λ per format and budget, PMP's ρ per complement mode),
each point labelled with its knob, so the curve shows what each step of strength costs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.report.sweeps import pmp_settings, trap2_settings
from bench.runtime.storage import replace_atomically

TRADEOFF_PATTERN = "tradeoff_*.png"


def _series(board: pd.DataFrame, cells: pd.DataFrame, track: str) -> list[tuple[str, pd.DataFrame, str]]:
    """(legend label, board rows in knob order, knob column) for each sweep on `track`."""
    out = []
    if track == "merge":
        settings = trap2_settings(cells)
        settings = settings.assign(budget=settings["steps"].map(lambda s: "zoo budget" if pd.isna(s) else f"{int(s)} steps"))
        for (budget, release_format), group in board.merge(settings, on="defense").groupby(
                ["budget", "release_format"], sort=True):
            out.append((f"Trap² λ, {release_format}, {budget}", group.sort_values("lambda_"), "lambda_"))
    else:
        settings = pmp_settings(cells)
        for mode, group in board.merge(settings, on="defense").groupby("complement", sort=True):
            out.append((f"PMP ρ, {mode}", group.sort_values("rho"), "rho"))
    return out


def plot_tradeoffs(cells: pd.DataFrame, board: pd.DataFrame, directory: Path) -> list[Path]:
    """Write one trade-off PNG per track × model that holds a sweep of two or more settings; return them."""
    scored = board[(board["status"] == "ok") & board["protection"].notna() & board["utility_retention"].notna()]
    written = []
    for (track, model), rows in scored.groupby(["track", "model"], sort=True):
        series = [s for s in _series(rows, cells, str(track)) if len(s[1]) >= 2]
        if not series:
            continue
        figure = Figure(figsize=(7.5, 5.0), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        swept = {label for _, group, _ in series for label in group["defense"]}
        others = rows[~rows["defense"].isin(swept)]
        axes.scatter(others["protection"], others["utility_retention"], color="#999", marker="x",
                     label="other defenses")
        for _, row in others.iterrows():
            axes.annotate(f"{row['defense']} ({row['release_format']})", (row["protection"], row["utility_retention"]),
                          fontsize=7, color="#777", xytext=(3, -8), textcoords="offset points")
        for label, group, knob in series:
            line = axes.plot(group["protection"], group["utility_retention"], marker="o", label=label)[0]
            for _, row in group.iterrows():
                axes.annotate(f"{row[knob]:g}", (row["protection"], row["utility_retention"]), fontsize=8,
                              color=line.get_color(), xytext=(4, 4), textcoords="offset points")
        right = max(1.05, float(rows["protection"].max()) + 0.1)  # protection exceeds 1 when utility does
        axes.set(xlim=(-0.05, right), title=f"{track} track, {model}: utility against protection",
                 xlabel="protection = mean over inputs of utility retention × (1 − success)",
                 ylabel="utility retention")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        path = Path(directory) / f"tradeoff_{track}_{model}.png"
        replace_atomically(path, lambda scratch, figure=figure: figure.savefig(scratch, format="png", dpi=110))
        written.append(path)
    return written
