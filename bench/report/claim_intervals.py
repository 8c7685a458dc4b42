"""Intervals for the claims table (DESIGN §9): a verdict whose interval straddles its line is *inconclusive*.

Each claim's number is recomputed on inputs resampled with replacement — an input being one (seed,
protected or downstream task, partners) — and the 2.5–97.5 % percentiles of the resampled numbers are its
interval. The resampling is paired: `none` and the defense, and every format and merge method of a claim,
are drawn on the same inputs, so what varies is which inputs the run happened to hold, not which defense
met which input. A number that varies only with the seed (a release's utility retention) is resampled over
seeds; with one seed its interval is the point, and the table says how many seeds it rests on.

Written here because the leaderboard's bootstrap (bench.results.bootstrap) resamples per-cell attack
success, while a claim is a ratio of means over cells (a cut of the merge's margin, a cut in points).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

REPS = 2000
LEVEL = 0.95
SEED = 0
INPUT_COLUMNS = ["seed", "task", "members"]


def input_keys(frame: pd.DataFrame, columns: Sequence[str] = INPUT_COLUMNS) -> pd.Series:
    """One hashable key per row naming its input."""
    return pd.Series(list(zip(*(frame[c].astype(str) for c in columns), strict=True)), index=frame.index,
                     dtype=object)


def units_of(frames: Sequence[pd.DataFrame], columns: Sequence[str] = INPUT_COLUMNS) -> list:
    """Every input any of the frames holds, in a fixed order."""
    return sorted({key for frame in frames for key in input_keys(frame, columns)})


def resample_weights(units: int, reps: int = REPS, seed: int = SEED) -> np.ndarray:
    """(reps, units) counts: how often each unit is drawn in each resample (row 0 is the data itself)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((reps, units))
    for rep in range(reps):
        counts[rep] = np.bincount(rng.integers(0, units, size=units), minlength=units) if units else counts[rep]
    counts[0] = 1.0
    return counts


def unit_means(frame: pd.DataFrame, units: list, column: str, columns: Sequence[str] = INPUT_COLUMNS) -> np.ndarray:
    """The mean of `column` per unit, in `units` order (NaN for a unit without a value)."""
    values = pd.to_numeric(frame[column], errors="coerce")
    means = values.groupby(input_keys(frame, columns)).mean() if len(frame) else pd.Series(dtype=float)
    return np.array([means.get(unit, math.nan) for unit in units], dtype=float)


def weighted_means(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per resample, the mean of `values` over its drawn units (NaN units skipped; NaN when none is left)."""
    known = ~np.isnan(values)
    total = weights[:, known].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights[:, known] * values[known]).sum(axis=1) / total, math.nan)


def percentile_interval(values: np.ndarray) -> tuple[float, float]:
    """The central LEVEL interval of the resampled numbers (NaN, NaN when none is finite)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return math.nan, math.nan
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def level_interval(level: Callable[[float], str], low: float, high: float, verdict: str) -> str:
    """The verdict, or `inconclusive` when the interval's ends fall on different sides of a line."""
    if math.isnan(low) or math.isnan(high):
        return verdict
    return verdict if level(low) == level(high) else "inconclusive"


def interval_text(low: float, high: float, digits: int = 2) -> str:
    return "" if math.isnan(low) else f" [{low:.{digits}f}, {high:.{digits}f}]"


def _resampled(frames: Sequence[pd.DataFrame], columns: Sequence[str]) -> tuple[list, np.ndarray]:
    units = units_of(frames, columns)
    return units, resample_weights(len(units))


def lowest_retention_interval(settings: Sequence[pd.DataFrame]) -> tuple[float, float]:
    """The lowest mean utility retention among settings (each a frame of one setting's ok cells), seeds
    resampled: a release's utility varies with its seed only."""
    if not settings:
        return math.nan, math.nan
    units, weights = _resampled(settings, ["seed"])
    lows = [weighted_means(weights, unit_means(frame, units, "utility_retention", ["seed"])) for frame in settings]
    return percentile_interval(np.fmin.reduce(np.vstack(lows), axis=0))


def worst_cut_interval(pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[float, float]:
    """The smallest cut of the merge's margin over the base, `(merged_none − merged) / (merged_none − base)`,
    among (none's cells, the defense's cells) pairs — a claim's formats × methods — inputs resampled, paired.
    A resample where `none`'s merge does not beat the base counts as −1: nothing to cut."""
    if not pairs:
        return math.nan, math.nan
    units, weights = _resampled([frame for pair in pairs for frame in pair], INPUT_COLUMNS)
    cuts = []
    for none, defended in pairs:
        base = weighted_means(weights, unit_means(none, units, "base_acc"))
        merged_none = weighted_means(weights, unit_means(none, units, "merged_acc"))
        merged = weighted_means(weights, unit_means(defended, units, "merged_acc"))
        margin = merged_none - base
        with np.errstate(invalid="ignore", divide="ignore"):
            cuts.append(np.where(margin > 0, (merged_none - merged) / np.where(margin > 0, margin, 1.0), -1.0))
    return percentile_interval(np.fmin.reduce(np.vstack(cuts), axis=0))


def largest_points_interval(settings: Sequence[pd.DataFrame]) -> tuple[float, float]:
    """The largest cut in points, `100 × (gain_none − gain_b1)` of a task's means, over settings and tasks
    (each frame one setting's finetune cells with `gain_none`), seeds resampled."""
    if not settings:
        return math.nan, math.nan
    units, weights = _resampled(settings, ["seed"])
    points = [100 * (weighted_means(weights, unit_means(task, units, "gain_none", ["seed"]))
                     - weighted_means(weights, unit_means(task, units, "gain_b1", ["seed"])))
              for frame in settings for _, task in frame.groupby("task")]
    return percentile_interval(np.fmax.reduce(np.vstack(points), axis=0)) if points else (math.nan, math.nan)
