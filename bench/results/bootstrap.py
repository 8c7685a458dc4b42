"""Intervals of DESIGN §5: a paired bootstrap over seeds and test examples.

Each resample draws the seeds with replacement and, per task, the test examples with replacement. The
example draw of a task is the same for every model scored on it (defense, `none`, control, base, experts:
paired), so a difference between a defense and `none` is not blurred by drawing their examples apart.
A cell's value (`joint_kept`, `advantage_auc`) is recomputed from the resampled accuracies; the
attacker's pick stays what it chose on `attacker_val` (its choice is not a test-set quantity). Where a
model's per-example values were not recorded (`bench.results.examples`), its accuracy is held at its
point value; so is a finetune release's utility (the mean over capability tasks, not in the cell).
Intervals are the 2.5 and 97.5 percentiles of the resampled aggregate, so they stay inside
the metric's range.

Our own code: scipy.stats.bootstrap resamples one sample per statistic, not several frames paired by
example and seed with a pick held fixed.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from bench.results.columns import BUDGETS, json_cell
from bench.results.examples import vector
from bench.results.metrics import ADVANTAGE_AUC_WEIGHTS
from bench.results.schema import CONTROL_DEFENSE, MATCH_KEY, REFERENCE_DEFENSE, RELEASE_KEY

_FINETUNE_ROLES = ("before", *BUDGETS)  # `before`, then b0125 … b1
_FINETUNE_POINTS = ("acc_before", "acc_b0125", "acc_b025", "acc_b05", "acc_after")
_SCRATCH_POINTS = ("acc_before_scratch", "acc_scratch_b0125", "acc_scratch_b025", "acc_scratch_b05",
                   "acc_after_scratch")


class Resampler:
    """Resampled values of the cells of one cells frame (row 0 of every array is the point estimate)."""

    def __init__(self, cells: pd.DataFrame, iters: int, seed: int):
        self.cells = cells
        self.size = iters + 1
        self.seed = seed
        self._control = self._first_row(cells[cells["defense"] == CONTROL_DEFENSE], MATCH_KEY)
        self._release = self._first_row(cells[cells["defense"] == REFERENCE_DEFENSE], RELEASE_KEY)
        self._releases = self._first_row(cells, (*RELEASE_KEY, "defense"))
        seeds = np.unique(cells["seed"].to_numpy())
        self.seeds = {int(s): i for i, s in enumerate(seeds)}
        draws = np.random.default_rng([seed, 1]).integers(0, len(seeds), size=(iters, len(seeds)))
        counts = [np.bincount(row, minlength=len(seeds)) for row in draws]
        self.seed_weights = np.vstack([np.ones((1, len(seeds))), *counts]) if counts else np.ones((1, len(seeds)))

        self._weights: dict[tuple[str, int], np.ndarray] = {}
        self._values: dict[int, np.ndarray] = {}

    @staticmethod
    def _first_row(frame: pd.DataFrame, key: tuple[str, ...]) -> dict[tuple, int]:
        """The label of the first ok row of each `key` value."""
        ok = frame[frame["status"] == "ok"]
        first: dict[tuple, int] = {}
        for index, value in zip(ok.index, ok[list(key)].itertuples(index=False, name=None), strict=True):
            first.setdefault(tuple(value), int(index))
        return first

    def _example_weights(self, task: str, n: int) -> np.ndarray:
        """(size, n) draw counts of task's n test examples, from a generator of (seed, task) alone: the same
        draw for every model scored on the task (paired), whatever order the cells come in."""
        if (task, n) not in self._weights:
            generator = np.random.default_rng([self.seed, 2, zlib.crc32(task.encode())])
            draws = generator.integers(0, n, size=(self.size - 1, n))
            self._weights[task, n] = np.vstack([np.ones((1, n)), *(np.bincount(row, minlength=n) for row in draws)])
        return self._weights[task, n]

    def accuracy(self, examples: object, role: str, task: str, point: float) -> np.ndarray:
        """A model's accuracy on `task` per resample, from the per-example values of `role` in `examples`."""
        values = vector(examples, role, task)
        if values is None or pd.isna(point):
            return np.full(self.size, point, dtype="float64")
        result = self._example_weights(task, len(values)) @ values / len(values)
        result[0] = point
        return result

    def value(self, index: int) -> np.ndarray:
        """The cell's `cell_value` per resample (NaN where it is not measurable); computed once per cell, as a
        pick and every oracle over its input read it."""
        if index not in self._values:
            row = self.cells.loc[index]
            if pd.isna(row["cell_value"]):
                values = np.full(self.size, np.nan)
            else:
                values = self._merge(row) if row["track"] == "merge" else self._finetune(row)
                values[0] = row["cell_value"]
            self._values[index] = values
        return self._values[index]

    def retention(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The cell's release `utility` and `utility_retention` per resample. Merge track: the release's and its
        reference's (`budget_reference`, else `none`'s) per-example values on T_p, paired. Finetune track: held
        at the point (the capability tasks' per-example values are not in the cell)."""
        row = self.cells.loc[index]
        utility, retention = (np.full(self.size, row[c], dtype="float64") for c in ("utility", "utility_retention"))
        if row["track"] != "merge" or pd.isna(row["utility_retention"]):
            return utility, retention
        task = row["task"]
        reference = self._releases.get((*(row[k] for k in RELEASE_KEY), row["budget_reference"] or REFERENCE_DEFENSE))
        mine = self.accuracy(row["examples"], "release", task, row["utility"])
        if reference is None:
            return mine, retention
        theirs = self.accuracy(self.cells.loc[reference, "examples"], "release", task, row["utility_reference"])
        with np.errstate(divide="ignore", invalid="ignore"):
            resampled = np.where(theirs > 0, mine / np.where(theirs > 0, theirs, 1.0), np.nan)
        resampled[0] = row["utility_retention"]
        return mine, resampled

    def _keyed(self, table: dict[tuple, int], row: pd.Series, key: tuple[str, ...]) -> pd.Series | None:
        index = table.get(tuple(row[k] for k in key))
        return None if index is None else self.cells.loc[index]

    def _merge(self, row: pd.Series) -> np.ndarray:
        task, examples = row["task"], row["examples"]
        control = self._keyed(self._control, row, MATCH_KEY)
        release = self._keyed(self._release, row, RELEASE_KEY)
        merged_p = self.accuracy(examples, "merged", task, row["merged_acc"])
        control_p = self.accuracy(None if control is None else control["examples"], "merged", task, row["control_acc"])
        expert_p = self.accuracy(None if release is None else release["examples"], "release", task, row["utility_none"])
        base_p = self.accuracy(examples, "base", task, row["base_acc"])
        kept_p = _share(merged_p - control_p, expert_p - base_p)
        merged, base, experts = (json_cell(row[c]) for c in ("merged_acc_by_member", "base_acc_by_member",
                                                                "expert_acc_by_member"))
        shares = [_share(self.accuracy(examples, "merged", m, merged[m]) - self.accuracy(examples, "base", m, base[m]),
                         self.accuracy(examples, "experts", m, experts[m]) - self.accuracy(examples, "base", m, base[m]))
                  for m in merged]
        if not shares:
            return kept_p
        kept_m = np.mean(np.vstack(shares), axis=0)  # NaN when any member's share is not measurable
        return np.where(np.isnan(kept_p), np.nan, np.fmin(kept_p, kept_m))

    def _finetune(self, row: pd.Series) -> np.ndarray:
        task = row["task"]
        control = self._keyed(self._control, row, MATCH_KEY)
        total = np.zeros(self.size)
        for weight, role, own, scratch in zip(ADVANTAGE_AUC_WEIGHTS, _FINETUNE_ROLES, _FINETUNE_POINTS, _SCRATCH_POINTS,
                                              strict=True):
            after = self.accuracy(row["examples"], role, task, row[own])
            other = self.accuracy(None if control is None else control["examples"], role, task, row[scratch])
            total = total + weight * (after - other)
        return total


def _share(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator where the denominator is positive, else NaN (the metrics' `ratio`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the resamples (row 0, the point, excluded); NaN without resamples."""
    rest = values[1:]
    rest = rest[~np.isnan(rest)]
    if rest.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(rest, [2.5, 97.5])
    return float(low), float(high)
