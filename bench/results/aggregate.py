"""picks → one leaderboard row per (defense, track, model, release_format), the sensitivity table, and the
run-level validity checks of DESIGN §6.

Order (DESIGN §5): per input first (`bench.results.picks`: the attacker's pick on `attacker_val`, its test
value over `none`'s pick on the same input and seed); then, per row, each aggregate of
`bench.results.metrics.AGGREGATE_METRICS` over the row's inputs — a mean or a maximum ("worst case" names
only a maximum) — with a paired bootstrap interval over seeds and test examples (`bench.results.bootstrap`).
A row's verdict compares its headline interval with `broken_line`; the same headline at each void-bar of
`sensitivity_bars` makes the sensitivity table, and a verdict that changes across it is threshold-sensitive.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench.plugins import ATTACK_FAMILIES
from bench.results.bootstrap import Resampler, interval
from bench.results.columns import PROVENANCE_COLUMNS
from bench.results.metrics import AGGREGATE_METRICS, AggregateMetric
from bench.results.normalise import ValidityRule
from bench.results.picks import ALL_FAMILIES, pick_inputs, reasons_of_void
from bench.results.schema import (
    CONTROL_DEFENSE,
    GROUP_KEY,
    LEADERBOARD_COLUMNS,
    REFERENCE_DEFENSE,
    SENSITIVITY_SCHEMA,
    conform_frame,
    sort_frame,
)

_RESAMPLED = ("success", "success_raw", "oracle_success", "pick_value", "none_pick_value", "protection", "utility",
              "utility_retention")


class Evidence:
    """The picks of one cells frame with every resampled column (row 0: the point), computed once and
    re-read at each void-bar: only `void` depends on the bar."""

    def __init__(self, cells: pd.DataFrame, rule: ValidityRule):
        self.cells = sort_frame(conform_frame(cells, "cells"), "cells")  # pick_index = row of cells.csv
        self.rule = rule
        self.picks = pick_inputs(self.cells, rule)
        self.resampler = Resampler(self.cells, rule.bootstrap_iters, rule.bootstrap_seed)
        self.columns = self._resampled_columns()

    def _resampled_columns(self) -> dict[str, np.ndarray]:
        """(n picks, size) per column of `_RESAMPLED` and of every plain column an aggregate reads."""
        size = self.resampler.size
        picks = self.picks
        value = {int(i): self.resampler.value(int(i))
                 for i in {*picks["pick_index"].dropna(), *picks["none_pick_index"].dropna()}}
        nan = np.full(size, np.nan)
        mine = (np.vstack([nan if pd.isna(i) else value[int(i)] for i in picks["pick_index"]]) if len(picks)
                else np.zeros((0, size)))
        none = (np.vstack([nan if pd.isna(i) else value[int(i)] for i in picks["none_pick_index"]]) if len(picks)
                else np.zeros((0, size)))
        oracle = np.vstack([self._oracle(row) for _, row in picks.iterrows()]) if len(picks) else np.zeros((0, size))
        with np.errstate(divide="ignore", invalid="ignore"):
            positive = np.where(none > 0, none, np.nan)
            raw = mine / positive
            success = np.clip(raw, 0.0, 1.0)
            columns = {"pick_value": mine, "none_pick_value": none, "success_raw": raw, "success": success,
                       "oracle_success": np.clip(oracle / positive, 0.0, 1.0)}
        kept = [self.resampler.retention(int(i)) if not pd.isna(i) else None for i in picks["pick_index"]]
        points = {name: _floats(picks[name]) for name in ("utility", "utility_retention")}
        for position, name in enumerate(("utility", "utility_retention")):
            columns[name] = (np.vstack([np.full(size, points[name][n]) if pair is None else pair[position]
                                        for n, pair in enumerate(kept)]) if len(picks) else np.zeros((0, size)))
        columns["protection"] = columns["utility_retention"] * (1.0 - success)
        for name in {m.column for m in AGGREGATE_METRICS} - set(columns):
            columns[name] = np.repeat(_floats(picks[name])[:, None], size, axis=1)
        for name in _RESAMPLED:  # row 0 is exactly the CSV's number
            columns[name][:, 0] = _floats(picks[name])
        return columns

    def _oracle(self, row: pd.Series) -> np.ndarray:
        if pd.isna(row["pick_index"]):
            return np.full(self.resampler.size, np.nan)
        cells = self.cells
        same = (cells["status"] == "ok") & (cells["defense"] == row["defense"]) & cells["cell_value"].notna()
        for key in ("track", "model", "release_format", "task", "members", "seed"):
            same &= cells[key] == row[key]
        if row["pick_family"] != ALL_FAMILIES:
            same &= cells["attack_family"] == row["pick_family"]
        return np.nanmax(np.vstack([self.resampler.value(int(i)) for i in cells.index[same]]), axis=0)

    def void(self, bar: float) -> np.ndarray:
        """Per pick, void at this merge bar (finetune inputs keep their own rule)."""
        if bar == self.rule.min_kept_fraction:
            return self.picks["void"].to_numpy(dtype=bool)
        merge = self.picks["track"] == "merge"
        below = self.picks["none_pick_value"].isna() | (self.picks["none_pick_value"] < bar)
        return np.where(merge, below, self.picks["void"]).astype(bool)

    def reduce(self, rows: np.ndarray, metric: AggregateMetric, void: np.ndarray) -> np.ndarray:
        """The metric over the picks `rows` (a boolean mask) per resample; NaN where nothing is left."""
        family = self.picks["pick_family"].to_numpy() == metric.family
        keep = rows & family & (~void if metric.over == "live" else True)
        values = self.columns[metric.column][keep]
        if values.shape[0] == 0:
            return np.full(self.resampler.size, np.nan)
        seeds = [self.resampler.seeds[int(s)] for s in self.picks["seed"].to_numpy()[keep]]
        weights = self.resampler.seed_weights[:, seeds].T  # (k, size): how often each input's seed was drawn
        present = ~np.isnan(values) & (weights > 0)
        if metric.reduce == "max":
            return np.where(present.any(axis=0), np.nanmax(np.where(present, values, -np.inf), axis=0), np.nan)
        total = np.where(present, weights, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, np.where(present, values * weights, 0.0).sum(axis=0) / total, np.nan)


def _floats(series: pd.Series) -> np.ndarray:
    """A numeric or optional-boolean column as float64, NaN where missing."""
    return series.astype("Float64").to_numpy(dtype="float64", na_value=np.nan)


def verdict(point: float, low: float, high: float, line: float) -> str:
    """`broken` when the interval lies at or above the line, `holds` when below it, else `partly`; without an
    interval (no resamples) the point alone decides between broken and holds."""
    if math.isnan(point):
        return ""
    if math.isnan(low):
        return "broken" if point >= line else "holds"
    return "broken" if low >= line else ("holds" if high < line else "partly")


def _joined(values: pd.Series) -> str:
    """A provenance value that should be constant; several values are kept visibly, joined with ';'."""
    return ";".join(sorted({v for v in values.tolist() if v}))


def _group_mask(picks: pd.DataFrame, key: tuple) -> np.ndarray:
    mask = np.ones(len(picks), dtype=bool)
    for column, value in zip(GROUP_KEY, key, strict=True):
        mask &= picks[column].to_numpy() == value
    return mask


def _headline(evidence: Evidence, rows: np.ndarray, void: np.ndarray) -> tuple[float, float, float]:
    values = evidence.reduce(rows, AGGREGATE_METRICS[0], void)
    return (float(values[0]), *interval(values))


def sensitivity(evidence: Evidence) -> pd.DataFrame:
    """The headline of every defense row at each void-bar of `sensitivity_bars` (merge; finetune inputs keep
    their own rule, so their rows repeat), with its interval and verdict."""
    picks, rule = evidence.picks, evidence.rule
    rows = []
    keys = picks[list(GROUP_KEY)].drop_duplicates().itertuples(index=False, name=None)
    for key in sorted(k for k in keys if k[0] != REFERENCE_DEFENSE):
        mask = _group_mask(picks, key)
        for bar in rule.sensitivity_bars:
            void = evidence.void(bar)
            point, low, high = _headline(evidence, mask, void)
            live = mask & ~void & (picks["pick_family"].to_numpy() == ALL_FAMILIES)
            rows.append({**dict(zip(GROUP_KEY, key, strict=True)), "bar": bar, "attack_success": point,
                         "attack_success_lo": low, "attack_success_hi": high,
                         "verdict": verdict(point, low, high, rule.broken_line), "n_inputs_live": int(live.sum())})
    frame = pd.DataFrame(rows, columns=[c.name for c in SENSITIVITY_SCHEMA])
    return sort_frame(conform_frame(frame, "sensitivity"), "sensitivity")


def _row(evidence: Evidence, key: tuple, group: pd.DataFrame, table: pd.DataFrame) -> dict[str, Any]:
    picks, rule = evidence.picks, evidence.rule
    mask = _group_mask(picks, key)
    void = evidence.void(rule.min_kept_fraction)
    overall = mask & (picks["pick_family"].to_numpy() == ALL_FAMILIES)
    status = "n/a" if (group["status"] == "n/a").all() else ("ok" if (overall & ~void).any() else "invalid")
    row: dict[str, Any] = {**dict(zip(GROUP_KEY, key, strict=True)), "family": _joined(group["family"]),
                           "paper": _joined(group["defense_paper"]), "status": status}
    for metric in AGGREGATE_METRICS:
        values = evidence.reduce(mask, metric, void)
        row[metric.name] = float(values[0])
        row[f"{metric.name}_lo"], row[f"{metric.name}_hi"] = interval(values)
    is_none = key[0] == REFERENCE_DEFENSE
    row["verdict"] = "reference" if is_none else verdict(row["attack_success"], row["attack_success_lo"],
                                                         row["attack_success_hi"], rule.broken_line)
    high = row["attack_success_hi"]
    row["below_none"] = None if is_none or math.isnan(high) else bool(high < 1.0)
    mine = table[(table[list(GROUP_KEY)] == pd.Series(key, index=list(GROUP_KEY))).all(axis=1)]
    row["threshold_sensitive"] = None if is_none or mine.empty else bool(mine["verdict"].nunique() > 1)
    live = picks[overall & ~void]
    worst = live.sort_values(["success", "task", "seed"], ascending=[False, True, True], kind="mergesort")
    first = worst.iloc[0] if not worst.empty and worst["success"].notna().any() else None
    row["worst_attack"] = "" if first is None else first["pick_attack"]
    row["worst_attack_key"] = "" if first is None else first["pick_attack_key"]
    row["worst_attack_family"] = "" if first is None else first["pick_attack_family"]
    every = picks[overall]
    row |= {"n_seeds": int(group.loc[group["status"] == "ok", "seed"].nunique()),
            "n_tasks": int(live["task"].nunique()), "n_inputs": int(len(every)),
            "n_inputs_void": int(void[overall].sum()), "n_inputs_broken": int(live["broken"].sum())}
    for family in ATTACK_FAMILIES:
        family_rows = mask & (picks["pick_family"].to_numpy() == family)
        row[f"n_void_{family}"] = int(void[family_rows].sum())
    row |= {"n_cells_failed": int((group["status"] == "failed").sum()),
            "n_cells_unmatched": int(((group["status"] == "ok") & ~group["reference_found"]).sum())}
    row["flags"] = _flags(evidence, mask, void, row)
    row |= {"utility_tasks_acc": "", "utility_tasks_retention": ""}  # bench.report.utility fills them
    row |= {name: _joined(group[name]) for name in PROVENANCE_COLUMNS}
    return row


def _flags(evidence: Evidence, mask: np.ndarray, void: np.ndarray, row: dict[str, Any]) -> str:
    """What a reader must know before the row's numbers: families void on every input (with the reason),
    releases of a trap defense without a trap, a verdict that moves with the void-bar."""
    picks = evidence.picks
    flags = []
    for family in ATTACK_FAMILIES:
        mine = mask & (picks["pick_family"].to_numpy() == family)
        if mine.any() and void[mine].all():
            flags.append(f"{family}: void on every input ({reasons_of_void(picks[mine])})")
    rate = row.get("trap_formed_rate", math.nan)
    if row["track"] == "merge" and row["defense"].startswith("trap2") and not math.isnan(rate) and rate < 1.0:
        flags.append(f"no trap formed in {1 - rate:.0%} of releases (trap_formed false)")
    if row.get("threshold_sensitive"):
        flags.append("threshold-sensitive: the verdict changes between void-bars "
                     f"{min(evidence.rule.sensitivity_bars):g} and {max(evidence.rule.sensitivity_bars):g}")
    return "; ".join(flags)


def aggregate_all(cells: pd.DataFrame, rule: ValidityRule | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(leaderboard, picks, sensitivity) of one cells table."""
    evidence = Evidence(cells, rule or ValidityRule())
    table = sensitivity(evidence)
    ranked = evidence.cells[evidence.cells["defense"] != CONTROL_DEFENSE]
    rows = [_row(evidence, key, group, table) for key, group in ranked.groupby(list(GROUP_KEY), sort=True)]
    board = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    return sort_frame(conform_frame(board, "leaderboard"), "leaderboard"), evidence.picks, table


def aggregate(cells: pd.DataFrame, rule: ValidityRule | None = None) -> pd.DataFrame:
    """One leaderboard row per (defense, track, model, release_format), `none` included, controls not.

    ``status`` is "n/a" when every row of the group is n/a (the defense does not support that architecture
    or format) and "invalid" when cells ran but every input is void (`none`'s pick below the bar)."""
    return aggregate_all(cells, rule)[0]


def validity_failures(cells: pd.DataFrame, rule: ValidityRule | None = None) -> list[str]:
    """DESIGN §6's run-level rule: every track × architecture keeps at least one input on which `none`'s
    overall pick is not void. One message per (track, model) that breaks it; all-n/a pairs are skipped."""
    cells = conform_frame(cells, "cells")
    picks = pick_inputs(cells, rule)
    failures = []
    for (track, model), group in cells.groupby(["track", "model"], sort=True):
        if (group["status"] == "n/a").all():
            continue
        mine = picks[(picks["track"] == track) & (picks["model"] == model) & (picks["defense"] == REFERENCE_DEFENSE)
                     & (picks["pick_family"] == ALL_FAMILIES)]
        if mine.empty:
            failures.append(f"{track} track, {model}: no ok '{REFERENCE_DEFENSE}' cell to pick from")
        elif mine["void"].all():
            failures.append(f"{track} track, {model}: '{REFERENCE_DEFENSE}' is void on every input "
                            f"({reasons_of_void(mine)})")
    return failures


def family_gaps(cells: pd.DataFrame, rule: ValidityRule | None = None) -> list[str]:
    """Per track × architecture × format, each attack family whose `none` pick is void on every input:
    DESIGN §6 says so loudly and publishes no number for it."""
    picks = pick_inputs(conform_frame(cells, "cells"), rule)
    none = picks[(picks["defense"] == REFERENCE_DEFENSE) & (picks["pick_family"] != ALL_FAMILIES)]
    gaps = []
    for (track, model, release_format, family), group in none.groupby(
            ["track", "model", "release_format", "pick_family"], sort=True):
        if group["void"].all():
            gaps.append(f"{track} track, {model}/{release_format}: '{family}' void on every input "
                        f"({reasons_of_void(group)})")
    return gaps
