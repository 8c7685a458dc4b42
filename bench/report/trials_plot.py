"""The trials-to-break curve (issue 29): for each searched attacker, the best `attacker_val` objective it had
found after each trial, per defense, with `none` beside it — so a reader sees whether a defense slows the
attacker's search (a curve that climbs later) or only lowers its ceiling (a curve that flattens lower).

It reads the search trace each searched attack reports in its knobs (`attack_knobs` in cells.csv): the
coefficient searches' `trace` and the Optuna study's `trials`, each entry holding the trial's `val`. A
search that stopped early keeps its best from then on. The objective is the attacker's own (e.g. the mean
normalised validation accuracy of Trap²'s protocol), so each panel is one attack and its y axis is that
attack's objective, not the test-split success of the leaderboard.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.results import CONTROL_DEFENSE, REFERENCE_DEFENSE
from bench.results.columns import json_cell
from bench.runtime.storage import replace_atomically

TRIALS_PATTERN = "trials_*.png"
TRACE_KEYS = ("trace", "trials")
MAX_PANELS = 12


def best_so_far(knobs_text: object) -> list[float] | None:
    """The running maximum of a cell's trial values, in trial order; None when the attack did not search."""
    knobs = json_cell(knobs_text)
    trace = next((knobs[key] for key in TRACE_KEYS if isinstance(knobs.get(key), list)), None)
    values = [float(trial["val"]) for trial in trace or [] if isinstance(trial, dict) and "val" in trial]
    return list(itertools.accumulate(values, max)) if values else None


def trial_curves(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean best-so-far per (track, model, attack, defense, trial): one row per point, trial counted from 1.
    A cell's curve is carried at its final best to the longest search of its (track, model, attack)."""
    ok = cells[(cells["status"] == "ok") & (cells["defense"] != CONTROL_DEFENSE)]
    rows = []
    for (track, model, attack), group in ok.groupby(["track", "model", "attack"], sort=True):
        curves = {index: curve for index, text in group["attack_knobs"].items() if (curve := best_so_far(text))}
        if not curves:
            continue
        length = max(len(curve) for curve in curves.values())
        padded = {index: curve + [curve[-1]] * (length - len(curve)) for index, curve in curves.items()}
        for defense, members in group.loc[list(padded)].groupby("defense", sort=True):
            mean = np.mean([padded[index] for index in members.index], axis=0)
            rows += [{"track": track, "model": model, "attack": attack, "defense": defense, "trial": trial + 1,
                      "best_val": float(value), "inputs": len(members)} for trial, value in enumerate(mean)]
    return pd.DataFrame(rows, columns=["track", "model", "attack", "defense", "trial", "best_val", "inputs"])


def plot_trials_to_break(cells: pd.DataFrame, directory: Path) -> list[Path]:
    """One PNG per track × model with a searched attack (`trials_<track>_<model>.png`); returns them."""
    if "attack_knobs" not in cells.columns:
        return []
    curves = trial_curves(cells)
    written = []
    for (track, model), rows in curves.groupby(["track", "model"], sort=True):
        attacks = sorted(rows["attack"].unique())[:MAX_PANELS]
        columns = min(3, len(attacks))
        lines = (len(attacks) + columns - 1) // columns
        figure = Figure(figsize=(4.2 * columns, 3.3 * lines + 0.6), layout="constrained")
        FigureCanvasAgg(figure)
        panels = np.atleast_1d(figure.subplots(lines, columns, squeeze=False)).ravel()
        for axes, attack in zip(panels, attacks, strict=False):
            for defense, line in rows[rows["attack"] == attack].groupby("defense", sort=True):
                reference = defense == REFERENCE_DEFENSE
                axes.plot(line["trial"], line["best_val"], drawstyle="steps-post", linewidth=2 if reference else 1,
                          color="black" if reference else None, linestyle="--" if reference else "-",
                          label=f"{defense} ({int(line['inputs'].iloc[0])})")
            axes.set(title=attack, xlabel="trials", ylabel="best attacker_val objective so far")
            axes.grid(alpha=0.3)
            axes.legend(fontsize=6)
        for axes in panels[len(attacks):]:
            axes.set_visible(False)
        figure.suptitle(f"{track} track, {model}: the searched attacker's best so far (inputs per defense)")
        path = Path(directory) / f"trials_{track}_{model}.png"
        replace_atomically(path, lambda scratch, figure=figure: figure.savefig(scratch, format="png", dpi=100))
        written.append(path)
    return written
