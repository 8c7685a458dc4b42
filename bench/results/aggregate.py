"""The cells table → one leaderboard row per (defense, track, model, release_format), and the run-level
validity checks of DESIGN §6.

Order of averaging, over the valid cells (`bench.results.normalise.valid_mask`): each aggregate of
`bench.results.metrics.AGGREGATE_METRICS` is reduced per (seed, task) over its cells (every attack
configuration and member set: the attacker picks whom to merge with), then averaged over tasks per seed,
then over seeds (mean and 95% Student-t half-width). Control rows are never ranked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench.plugins import ATTACK_FAMILIES
from bench.results.columns import PROVENANCE_COLUMNS
from bench.results.metrics import AGGREGATE_METRICS, AGGREGATE_NAMES
from bench.results.normalise import valid_mask
from bench.results.schema import (
    CONTROL_DEFENSE,
    GROUP_KEY,
    LEADERBOARD_COLUMNS,
    REFERENCE_DEFENSE,
    conform_frame,
    sort_frame,
)

_TASK_KEY = [*GROUP_KEY, "seed", "task"]


def mean_ci95(values: Sequence[float] | pd.Series) -> tuple[float, float]:
    """Mean over seeds and the half-width of its 95% Student-t interval (NaN below two values).

    half-width = t.ppf(0.975, n − 1) · s / √n, s the sample standard deviation (ddof 1); NaNs dropped.
    """
    array = np.asarray(pd.Series(values, dtype="float64").dropna())
    n = len(array)
    if n == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if n < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, n - 1) * array.std(ddof=1) / math.sqrt(n))


def _worst_of(group: pd.DataFrame) -> dict[str, Any]:
    """The worst attack of one (seed, task): highest headline success; ties to the first (attack, key)."""
    top = group[group["headline_success"] == group["headline_success"].max()]
    top = top.sort_values(["attack", "attack_key"], kind="mergesort")
    if top.empty:
        return {"worst_attack": "", "worst_attack_key": "", "worst_attack_family": ""}
    first = top.iloc[0]
    return {"worst_attack": first["attack"], "worst_attack_key": first["attack_key"],
            "worst_attack_family": first["attack_family"]}


def attack_summaries(cells: pd.DataFrame) -> pd.DataFrame:
    """Stage 1: one row per (defense, track, model, release_format, seed, task) with every aggregate."""
    cells = conform_frame(cells, "cells")
    ranked = cells[cells["defense"] != CONTROL_DEFENSE]
    valid = ranked[valid_mask(ranked)]
    scored = ranked[(ranked["status"] == "ok") & ranked["reference_found"]]
    groups = {key: group for key, group in valid.groupby(_TASK_KEY, sort=True)}
    scored_groups = {key: group for key, group in scored.groupby(_TASK_KEY, sort=True)}
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = dict(zip(_TASK_KEY, key, strict=True))
        for metric in AGGREGATE_METRICS:
            source = group if metric.over == "valid" else scored_groups[key]
            row[metric.name] = metric.reduce(source)
        rows.append(row | _worst_of(group) | {"n_attacks": len(group)})
    columns = [*_TASK_KEY, *AGGREGATE_NAMES, "worst_attack", "worst_attack_key", "worst_attack_family", "n_attacks"]
    return pd.DataFrame(rows, columns=columns)


def seed_summaries(cells: pd.DataFrame) -> pd.DataFrame:
    """Stage 2: per (defense, track, model, release_format, seed), the per-task numbers averaged over tasks."""
    per_task = attack_summaries(cells)
    keys = [*GROUP_KEY, "seed"]
    if per_task.empty:
        return pd.DataFrame(columns=[*keys, *AGGREGATE_NAMES, "n_tasks"])
    grouped = per_task.groupby(keys, sort=True)
    per_seed = grouped[list(AGGREGATE_NAMES)].mean()
    per_seed["n_tasks"] = grouped["task"].nunique()
    return per_seed.reset_index()


def _worst_attack(per_task: pd.DataFrame) -> tuple[str, str, str]:
    """Most frequent worst attack over (seed, task); ties to the higher mean worst success, then the name."""
    if per_task.empty:
        return "", "", ""
    ranking = (per_task.groupby("worst_attack")["worst_attack_success"].agg(["size", "mean"])
               .reset_index().sort_values(["size", "mean", "worst_attack"], ascending=[False, False, True],
                                          kind="mergesort"))
    name = ranking["worst_attack"].iloc[0]
    picks = per_task[per_task["worst_attack"] == name]
    keys = picks["worst_attack_key"].value_counts()
    key = sorted(keys[keys == keys.max()].index)[0]
    family = picks.loc[picks["worst_attack_key"] == key, "worst_attack_family"].iloc[0]
    return str(name), str(key), str(family)


def _joined(values: pd.Series) -> str:
    """A provenance value that should be constant; several values are kept visibly, joined with ';'."""
    return ";".join(sorted({v for v in values.tolist() if v}))


def _counts(group: pd.DataFrame, valid: pd.Series) -> dict[str, int]:
    """Distinct attack configurations with at least one valid / weak cell, overall and per family."""
    counts = {"n_attacks_valid": int(group.loc[valid, "attack_key"].nunique()),
              "n_attacks_weak": int(group.loc[group["weak"], "attack_key"].nunique())}
    for family in ATTACK_FAMILIES:
        mine = group["attack_family"] == family
        counts[f"n_valid_{family}"] = int(group.loc[valid & mine, "attack_key"].nunique())
        counts[f"n_weak_{family}"] = int(group.loc[group["weak"] & mine, "attack_key"].nunique())
    return counts


def _flags(group: pd.DataFrame, valid: pd.Series, row: dict[str, Any]) -> str:
    """What a reader must know before reading the row's numbers: families without a valid attack (with the
    measured reason), releases of a trap defense without a trap."""
    flags = []
    ok = group["status"] == "ok"
    for family in ATTACK_FAMILIES:
        mine = ok & (group["attack_family"] == family)
        if mine.any() and not (valid & mine).any():
            reasons = sorted({r for r in group.loc[mine & group["weak"], "weak_reason"] if r})
            flags.append(f"{family}: no valid attack (on none: {reasons[0] if reasons else 'unmatched'})")
    rate = row.get("trap_formed_rate", math.nan)
    if row["track"] == "merge" and row["defense"].startswith("trap2") and not math.isnan(rate) and rate < 1.0:
        flags.append(f"no trap formed in {1 - rate:.0%} of releases (trap_formed false)")
    return "; ".join(flags)


def aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """One leaderboard row per (defense, track, model, release_format), `none` included, controls not.

    ``status`` is "n/a" when every row of the group is n/a (the defense does not support that
    architecture or format) and "invalid" when cells ran but none is valid (every attack weak on `none`).
    """
    cells = conform_frame(cells, "cells")
    ranked = cells[cells["defense"] != CONTROL_DEFENSE]
    per_task = attack_summaries(cells)
    per_seed = seed_summaries(cells)
    valid = valid_mask(ranked)
    seeds_of = {key: frame for key, frame in per_seed.groupby(list(GROUP_KEY))}
    tasks_of = {key: frame for key, frame in per_task.groupby(list(GROUP_KEY))}
    rows = []
    for key, group in ranked.groupby(list(GROUP_KEY), sort=True):
        seeds = seeds_of.get(key, per_seed.iloc[:0])
        group_valid = valid[group.index]
        status = "n/a" if (group["status"] == "n/a").all() else ("ok" if group_valid.any() else "invalid")
        row: dict[str, Any] = {**dict(zip(GROUP_KEY, key, strict=True)), "family": _joined(group["family"]),
                               "paper": _joined(group["defense_paper"]), "status": status}
        for metric in AGGREGATE_NAMES:
            row[metric], row[f"{metric}_ci95"] = mean_ci95(seeds[metric])
        row["worst_attack"], row["worst_attack_key"], row["worst_attack_family"] = _worst_attack(
            tasks_of.get(key, per_task.iloc[:0]))
        row |= {"n_seeds": int(seeds["seed"].nunique()),
                "n_tasks": int(group.loc[group_valid, "task"].nunique()),
                **_counts(group, group_valid),
                "n_cells_failed": int((group["status"] == "failed").sum()),
                "n_cells_unmatched": int(((group["status"] == "ok") & ~group["reference_found"]).sum())}
        row["flags"] = _flags(group, group_valid, row)
        row |= {name: _joined(group[name]) for name in PROVENANCE_COLUMNS}
        rows.append(row)
    board = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    return sort_frame(conform_frame(board, "leaderboard"), "leaderboard")


def validity_failures(cells: pd.DataFrame) -> list[str]:
    """DESIGN §6's run-level rule: every track × architecture needs an attack that is valid on `none`.

    One message per (track, model) that breaks it; pairs whose every row is n/a are skipped.
    """
    cells = conform_frame(cells, "cells")
    failures = []
    for (track, model), group in cells.groupby(["track", "model"], sort=True):
        if (group["status"] == "n/a").all():
            continue
        reference = group[(group["defense"] == REFERENCE_DEFENSE) & (group["status"] == "ok")]
        if reference.empty:
            failures.append(f"{track} track, {model}: no ok '{REFERENCE_DEFENSE}' cell to normalise by")
        elif not valid_mask(reference).any():
            reasons = sorted({r for r in reference["weak_reason"] if r}) or ["unmatched"]
            attacks = ", ".join(sorted(reference["attack"].unique()))
            failures.append(f"{track} track, {model}: no attack is valid against '{REFERENCE_DEFENSE}' "
                            f"({attacks}; e.g. {reasons[0]})")
    return failures


def family_gaps(cells: pd.DataFrame) -> list[str]:
    """Per track × architecture × format, each attack family of the grid without a valid attack on `none`:
    DESIGN §6 says so loudly and publishes no number for it."""
    cells = conform_frame(cells, "cells")
    reference = cells[(cells["defense"] == REFERENCE_DEFENSE) & (cells["status"] == "ok")]
    valid = valid_mask(reference)
    gaps = []
    keys = ["track", "model", "release_format", "attack_family"]
    for (track, model, release_format, family), group in reference.groupby(keys, sort=True):
        if not valid[group.index].any():
            reasons = sorted({r for r in group["weak_reason"] if r})
            gaps.append(f"{track} track, {model}/{release_format}: no valid '{family}' attack "
                        f"({', '.join(sorted(group['attack'].unique()))}: {reasons[0] if reasons else 'unmatched'})")
    return gaps
