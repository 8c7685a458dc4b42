"""The attacker's pick per input (DESIGN §5): what one attacker would publish, chosen on its own split.

An *input* is one (defense, track, model, release format, task, partners, seed). Per input, overall and per
attack family, the attacker picks the configuration with the best `val_objective` (its `attacker_val`
score, from its own references only); the pick's *test* value (`cell_value`) is the number. The oracle
(best `cell_value` on test) is published beside it as an upper bound. Success divides the pick by
`none`'s pick on the same input and seed. A family is void on an input when `none`'s pick is below the
bar (merge: `joint_kept < min_kept_fraction`; finetune: the fine-tuning rule): nothing is dropped before.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.results.normalise import ValidityRule, valid_mask
from bench.results.schema import CONTROL_DEFENSE, PICKS_COLUMNS, REFERENCE_DEFENSE, conform_frame, sort_frame

INPUT_KEY: tuple[str, ...] = ("defense", "track", "model", "release_format", "task", "members", "seed")
#: The overall pick's family label; the others are the attack families (bench.plugins.ATTACK_FAMILIES).
ALL_FAMILIES = "all"
_NONE_KEY = ["track", "model", "release_format", "task", "members", "seed", "pick_family"]


def _ordered(group: pd.DataFrame, by: str) -> pd.DataFrame:
    """Best `by` first; ties to the first (attack, attack_key), so a pick never depends on row order."""
    return group.assign(_neg=-group[by]).sort_values(["_neg", "attack", "attack_key"], kind="mergesort")


def _pick_row(key: tuple, family: str, group: pd.DataFrame) -> dict[str, Any]:
    """The attacker's pick among `group` (one input's ok cells of one family). Without a pickable cell
    (no `cell_value` or no `val_objective`) the input still has a row: its release was scored, and the
    row says why nothing could be picked (`void`)."""
    identity = {**dict(zip(INPUT_KEY, key, strict=True)), "pick_family": family, "n_configs": int(len(group)),
                "utility": float(group["utility"].iloc[0]), "utility_retention": float(group["utility_retention"].iloc[0]),
                "trap_formed": group["trap_formed"].iloc[0]}
    measured = group[valid_mask(group)]
    candidates = measured[measured["val_objective"].notna()]
    if candidates.empty:
        return identity | {"pick_attack": "", "pick_attack_key": "", "pick_attack_family": "", "oracle_attack": "",
                           "pick_val_objective": math.nan, "pick_value": math.nan, "oracle_value": math.nan,
                           "pick_index": None, "_advantage": math.nan, "_gain": math.nan, "_before": math.nan}
    pick = _ordered(candidates, "val_objective").iloc[0]
    oracle = _ordered(measured, "cell_value").iloc[0]
    return identity | {
        "pick_attack": pick["attack"], "pick_attack_key": pick["attack_key"],
        "pick_attack_family": pick["attack_family"], "pick_val_objective": float(pick["val_objective"]),
        "pick_value": float(pick["cell_value"]), "oracle_value": float(oracle["cell_value"]),
        "oracle_attack": oracle["attack"], "pick_index": int(pick.name),
        "_advantage": float(pick["advantage"]), "_gain": float(pick["gain_b1"]), "_before": float(pick["acc_before"])}


def _void_reason(row: pd.Series, rule: ValidityRule) -> str:
    """Why this input's family is void ("" when it is not): nothing to pick, or `none`'s pick below the bar."""
    if pd.isna(row["pick_value"]):
        return "no measurable configuration (cell_value or attacker_val score missing)"
    if pd.isna(row["none_pick_value"]):
        return "no measurable pick against none"
    if row["track"] == "merge":
        if row["none_pick_value"] < rule.min_kept_fraction:
            return f"none's pick keeps {row['none_pick_value']:.2f} < {rule.min_kept_fraction:g} jointly"
        return ""
    reasons = []
    if row["_none_before"] > rule.max_downstream_base:
        reasons.append(f"base on D {row['_none_before']:.2f} > {rule.max_downstream_base:g}")
    if not row["_none_gain"] >= rule.min_finetune_gain:
        reasons.append(f"none's pick gains {row['_none_gain']:.2f} < {rule.min_finetune_gain:g}")
    if not row["_none_advantage"] >= rule.min_scratch_margin:
        reasons.append(f"none's pick beats the from-scratch control by {row['_none_advantage']:.2f} < "
                       f"{rule.min_scratch_margin:g}")
    return "; ".join(reasons)


def pick_inputs(cells: pd.DataFrame, rule: ValidityRule | None = None) -> pd.DataFrame:
    """One row per input and pick family (`all` and each family present), with `none`'s pick beside it,
    success, void and broken. `pick_index` / `none_pick_index` are the picked cells' row labels in `cells`."""
    rule = rule or ValidityRule()
    cells = conform_frame(cells, "cells")
    scored = cells[(cells["defense"] != CONTROL_DEFENSE) & (cells["status"] == "ok")]
    rows = []
    for key, group in scored.groupby(list(INPUT_KEY), sort=True):
        for family in [ALL_FAMILIES, *sorted(set(group["attack_family"]))]:
            rows.append(_pick_row(key, family, group if family == ALL_FAMILIES
                                  else group[group["attack_family"] == family]))
    picks = pd.DataFrame(rows)
    if picks.empty:
        return conform_frame(pd.DataFrame({c: pd.Series(dtype="object") for c in PICKS_COLUMNS}), "picks")
    none = picks[picks["defense"] == REFERENCE_DEFENSE][[*_NONE_KEY, "pick_value", "oracle_value", "pick_index",
                                                          "pick_attack", "_advantage", "_gain", "_before"]]
    none = none.rename(columns={"pick_value": "none_pick_value", "oracle_value": "none_oracle_value",
                                "pick_index": "none_pick_index", "pick_attack": "none_pick_attack",
                                "_advantage": "_none_advantage", "_gain": "_none_gain", "_before": "_none_before"})
    picks = picks.merge(none, on=_NONE_KEY, how="left", validate="many_to_one")
    picks["void_reason"] = [_void_reason(row, rule) for _, row in picks.iterrows()]
    picks["void"] = picks["void_reason"] != ""
    denominator = picks["none_pick_value"].where(picks["none_pick_value"] > 0)
    picks["success_raw"] = picks["pick_value"] / denominator
    picks["success"] = picks["success_raw"].clip(0.0, 1.0)
    picks["oracle_success"] = (picks["oracle_value"] / denominator).clip(0.0, 1.0)
    picks["protection"] = picks["utility_retention"] * (1.0 - picks["success"])
    picks["broken"] = picks["success"] >= rule.broken_line
    for column in ("pick_index", "none_pick_index"):
        picks[column] = picks[column].astype("Int64")
    return sort_frame(conform_frame(picks[list(PICKS_COLUMNS)], "picks"), "picks")


def reasons_of_void(picks: pd.DataFrame) -> str:
    """The void reasons of some picks, the most frequent first, e.g. "none's pick keeps 0.31 < 0.5 jointly
    (4 of 6 inputs)"."""
    reasons = picks.loc[picks["void"], "void_reason"].value_counts()
    if reasons.empty:
        return "none void"
    return f"{reasons.index[0]}" + (f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else "")
