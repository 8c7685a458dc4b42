"""Every metric of DESIGN §5 as one declared entry: its column, range, track, formula text and computation.

The cells table's derived columns (`CELL_METRICS`) and the leaderboard's aggregates (`AGGREGATE_METRICS`)
are these lists; the CSV schemas (`bench.results.schema`), the normalisation (`bench.results.normalise`),
the aggregation (`bench.results.aggregate`), the README formulas and the HTML columns all read them, so a
metric is added, changed or documented in exactly one place.

A cell metric's `compute` receives the cells frame joined with the matching control row's columns (suffix
`_control`) and, from the `reference` stage on, the matching `none` row's (suffix `_none`), and returns a
Series; it may use the metrics declared before it. Formula texts may name the validity rule's fields as
`{rule.<field>}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from bench.plugins import ATTACK_FAMILIES
from bench.results.columns import ACC_COLUMNS, BUDGETS, ColumnKind, json_cell

Frame = pd.DataFrame
Stage = Literal["control", "reference"]
TrackName = Literal["merge", "finetune", "both"]


@dataclass(frozen=True)
class CellMetric:
    """A derived column of `cells.csv`."""

    name: str
    kind: ColumnKind
    track: TrackName
    stage: Stage
    formula: str
    compute: Callable[[Frame, object], pd.Series]  # (joined frame, validity rule) -> values
    lo: float | None = None
    hi: float | None = None


def ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """numerator / denominator where the denominator is positive, else NaN (nothing to scale by)."""
    return (numerator / denominator).where(denominator > 0)


def clip01(values: pd.Series) -> pd.Series:
    return values.clip(0.0, 1.0)


def kept_members(frame: Frame) -> pd.Series:
    """Mean over the other members m of (merged_m − base_m) / (merged_m[none] − base_m); NaN without members
    or where no member's none merge gained over the base."""
    values = []
    for merged, base, reference in zip(frame["merged_acc_by_member"], frame["base_acc_by_member"],
                                       frame["merged_acc_by_member_none"], strict=True):
        merged, base, reference = json_cell(merged), json_cell(base), json_cell(reference)
        kept = [(merged[m] - base[m]) / (reference[m] - base[m]) for m in merged
                if m in base and m in reference and reference[m] - base[m] > 0]
        values.append(sum(kept) / len(kept) if kept and len(kept) == len(merged) else math.nan)
    return pd.Series(values, index=frame.index, dtype="float64")


def joint_share(kept_p, kept_m):
    """min(kept_p, kept_m) of scalars or arrays: kept_p alone where no member has a gain to keep, and NaN
    where T_p has none (np.fmin alone would then give the members' share as the joint one). One rule for the
    headline (`joint_kept`) and the validity rule's kept fraction (normalise.joint_kept_vs_experts)."""
    return np.where(np.isnan(kept_p), np.nan, np.fmin(kept_p, kept_m))


def joint_kept(frame: Frame) -> pd.Series:
    """min(kept_protected, kept_members), by `joint_share`."""
    return pd.Series(joint_share(frame["kept_protected"].to_numpy(dtype=float),
                                 frame["kept_members"].to_numpy(dtype=float)), index=frame.index)


def paper_normalised_acc(frame: Frame) -> pd.Series:
    """Trap²'s normalised accuracy: the mean over T_p and the other members of merged / expert accuracy."""
    values = []
    for merged, utility, by_member, experts in zip(frame["merged_acc"], frame["utility_none"],
                                                   frame["merged_acc_by_member"], frame["expert_acc_by_member"],
                                                   strict=True):
        by_member, experts = json_cell(by_member), json_cell(experts)
        ratios = [merged / utility] if utility and utility > 0 else []
        ratios += [by_member[m] / experts[m] for m in by_member if experts.get(m, 0) > 0]
        whole = len(ratios) == 1 + len(by_member) and not pd.isna(merged)
        values.append(sum(ratios) / len(ratios) if whole else math.nan)
    return pd.Series(values, index=frame.index, dtype="float64")


#: Trapezoid weights of the advantage curve through x = 0, ⅛, ¼, ½, 1 (the value at 0 is the advantage
#: before any fine-tuning): 0.0625·a0 + 0.125·a⅛ + 0.1875·a¼ + 0.375·a½ + 0.25·a1.
ADVANTAGE_AUC_WEIGHTS: tuple[float, ...] = (0.0625, 0.125, 0.1875, 0.375, 0.25)
#: The legacy gain curve through (0, 0): 0.125·g⅛ + 0.1875·g¼ + 0.375·g½ + 0.25·g1.
GAIN_AUC_WEIGHTS: tuple[float, ...] = (0.125, 0.1875, 0.375, 0.25)


def _advantage_auc(frame: Frame) -> pd.Series:
    points = [frame["acc_before"] - frame["acc_before_scratch"],
              *(frame[f"advantage_{tag}"] for tag in BUDGETS if tag != "b1"), frame["advantage"]]
    return sum(weight * point for weight, point in zip(ADVANTAGE_AUC_WEIGHTS, points, strict=True))


def _gain_auc(frame: Frame) -> pd.Series:
    return sum(w * frame[f"gain_{tag}"] for w, tag in zip(GAIN_AUC_WEIGHTS, BUDGETS, strict=True))


def _by_track(frame: Frame, merge: pd.Series, finetune: pd.Series) -> pd.Series:
    return merge.where(frame["track"] == "merge", finetune)


def _copy(column: str, suffix: str) -> Callable[[Frame, object], pd.Series]:
    return lambda frame, rule: frame[f"{column}_{suffix}"]


_SCRATCH = [
    CellMetric(f"acc_scratch_{tag}", "float", "finetune", "control",
               f"the from-scratch control's accuracy on D after {fraction:g} of the budget",
               _copy(column, "control"), 0.0, 1.0)
    for column, (tag, fraction) in zip(ACC_COLUMNS, BUDGETS.items(), strict=False)
]
_ADVANTAGES = [
    CellMetric(f"advantage_{tag}", "float", "finetune", "control", f"`acc_{tag} − acc_scratch_{tag}`",
               lambda frame, rule, tag=tag: frame[f"acc_{tag}"] - frame[f"acc_scratch_{tag}"], -1.0, 1.0)
    for tag in BUDGETS if tag != "b1"
]

CELL_METRICS: tuple[CellMetric, ...] = (
    # --- the control row (defense `control`, same attack on the same input and seed)
    CellMetric("control_found", "bool", "both", "control",
               "a control row (defense `control`) has the same (track, model, format, task, members, attack, seed)",
               lambda frame, rule: frame["_control"] == "both"),
    CellMetric("control_acc", "float", "merge", "control",
               "the release-free control's `merged_acc`: the same attack with the release replaced by the public "
               "base (zero update), i.e. what the attacker reaches on T_p without the release",
               _copy("merged_acc", "control"), 0.0, 1.0),
    CellMetric("acc_before_scratch", "float", "finetune", "control",
               "the from-scratch control's accuracy on D before fine-tuning (a random init of the architecture)",
               _copy("acc_before", "control"), 0.0, 1.0),
    *_SCRATCH,
    CellMetric("acc_after_scratch", "float", "finetune", "control",
               "the from-scratch control's `acc_after`: the same fine-tuning attack on a randomly initialised model",
               _copy("acc_after", "control"), 0.0, 1.0),
    *_ADVANTAGES,
    CellMetric("advantage", "float", "finetune", "control", "`acc_after − acc_after_scratch`",
               lambda frame, rule: frame["acc_after"] - frame["acc_after_scratch"], -1.0, 1.0),
    CellMetric("advantage_auc", "float", "finetune", "control",
               "area under the advantage curve over budget fractions 0, ⅛, ¼, ½, 1 (trapezoids): `0.0625·(acc_before "
               "− acc_before_scratch) + 0.125·advantage_b0125 + 0.1875·advantage_b025 + 0.375·advantage_b05 + "
               "0.25·advantage`", lambda frame, rule: _advantage_auc(frame), -1.0, 1.0),
    CellMetric("gain_auc", "float", "finetune", "control",
               "legacy: `0.125·gain_b0125 + 0.1875·gain_b025 + 0.375·gain_b05 + 0.25·gain_b1` (gain over acc_before)",
               lambda frame, rule: _gain_auc(frame), -1.0, 1.0),
    # --- the matching `none` row (the same attack against the unprotected release)
    CellMetric("reference_found", "bool", "both", "reference",
               "a `none` row has the same (track, model, format, task, members, attack, seed)",
               lambda frame, rule: frame["_reference"] == "both"),
    CellMetric("utility_none", "float", "both", "reference", "`none`'s `utility`", _copy("utility", "none"), 0.0, 1.0),
    CellMetric("merged_acc_none", "float", "merge", "reference", "`none`'s `merged_acc`",
               _copy("merged_acc", "none"), 0.0, 1.0),
    CellMetric("merged_acc_by_member_none", "str", "merge", "reference", "`none`'s `merged_acc_by_member`",
               _copy("merged_acc_by_member", "none")),
    CellMetric("release_loss_s05_none", "float", "merge", "reference", "`none`'s `release_loss_s05`",
               _copy("release_loss_s05", "none"), 0.0),
    CellMetric("advantage_none", "float", "finetune", "reference", "`none`'s `advantage`",
               _copy("advantage", "none"), -1.0, 1.0),
    CellMetric("advantage_auc_none", "float", "finetune", "reference", "`none`'s `advantage_auc`",
               _copy("advantage_auc", "none"), -1.0, 1.0),
    CellMetric("gain_none", "float", "finetune", "reference", "`none`'s `gain_b1`", _copy("gain_b1", "none"),
               -1.0, 1.0),
    CellMetric("gain_auc_none", "float", "finetune", "reference", "`none`'s `gain_auc`", _copy("gain_auc", "none"),
               -1.0, 1.0),
    CellMetric("utility_retention", "float", "both", "reference", "`utility / utility_none`",
               lambda frame, rule: ratio(frame["utility"], frame["utility_none"]), 0.0),
    CellMetric("paper_normalised_acc", "float", "merge", "reference",
               "Trap²'s own metric, beside ours: the mean over T_p and every other member t of `merged_t / expert_t` "
               "(T_p's expert: `utility_none`; the others' from `expert_acc_by_member`); no control, no base",
               lambda frame, rule: paper_normalised_acc(frame), 0.0),
    CellMetric("kept_protected", "float", "merge", "reference",
               "`(merged_acc − control_acc) / (merged_acc_none − control_acc)`: the share of what the unprotected "
               "release adds on T_p beyond the release-free control",
               lambda frame, rule: ratio(frame["merged_acc"] - frame["control_acc"],
                                         frame["merged_acc_none"] - frame["control_acc"])),
    CellMetric("kept_members", "float", "merge", "reference",
               "mean over the other members m of `(merged_m − base_m) / (merged_m[none] − base_m)`, from the JSON "
               "columns `merged_acc_by_member`, `base_acc_by_member`, `merged_acc_by_member_none` (empty without "
               "other members)", lambda frame, rule: kept_members(frame)),
    CellMetric("attack_success_raw", "float", "both", "reference",
               "unclipped headline: merge `min(kept_protected, kept_members)` (kept_protected alone where "
               "kept_members is empty; empty where kept_protected is); finetune `advantage_auc / "
               "advantage_auc_none`. Above 1: the release gives the attacker more than the unprotected one",
               lambda frame, rule: _by_track(frame, joint_kept(frame),
                                             ratio(frame["advantage_auc"], frame["advantage_auc_none"]))),
    CellMetric("attack_success", "float", "both", "reference",
               "merge `clip(attack_success_raw, 0, 1)` (joint: T_p and every other member); finetune at the full "
               "budget, `clip(advantage / advantage_none, 0, 1)`",
               lambda frame, rule: clip01(_by_track(frame, frame["attack_success_raw"],
                                                    ratio(frame["advantage"], frame["advantage_none"]))), 0.0, 1.0),
    CellMetric("attack_success_auc", "float", "finetune", "reference",
               "`clip(advantage_auc / advantage_auc_none, 0, 1)`: a defense that only slows adaptation lowers it",
               lambda frame, rule: clip01(ratio(frame["advantage_auc"], frame["advantage_auc_none"])), 0.0, 1.0),
    CellMetric("headline_success", "float", "both", "reference",
               "what the leaderboard ranks: `attack_success` (merge), `attack_success_auc` (finetune)",
               lambda frame, rule: _by_track(frame, frame["attack_success"], frame["attack_success_auc"]), 0.0, 1.0),
    CellMetric("protection", "float", "both", "reference", "`utility_retention × (1 − headline_success)`",
               lambda frame, rule: frame["utility_retention"] * (1.0 - frame["headline_success"]), 0.0),
    CellMetric("legacy_attack_success", "float", "both", "reference",
               "the previous definition, for comparison: merge `clip((merged_acc − base_acc) / (merged_acc_none − "
               "base_acc), 0, 1)` (T_p only, no control); finetune `clip(gain_b1 / gain_none, 0, 1)`",
               lambda frame, rule: clip01(_by_track(
                   frame, ratio(frame["merged_acc"] - frame["base_acc"], frame["merged_acc_none"] - frame["base_acc"]),
                   ratio(frame["gain_b1"], frame["gain_none"]))), 0.0, 1.0),
    CellMetric("legacy_attack_success_auc", "float", "finetune", "reference",
               "the previous AUC definition: `clip(gain_auc / gain_auc_none, 0, 1)`",
               lambda frame, rule: clip01(ratio(frame["gain_auc"], frame["gain_auc_none"])), 0.0, 1.0),
    CellMetric("trap_loss_gap", "float", "merge", "reference",
               "`release_loss_s05 − release_loss_s05_none`: how much more the release's loss rises at half scale "
               "(owner's held-out tail) than the unprotected expert's",
               lambda frame, rule: frame["release_loss_s05"] - frame["release_loss_s05_none"]),
    CellMetric("trap_formed", "boolean", "merge", "reference",
               "`trap_loss_gap > {rule.trap_margin}` (nats per answer token): a scale trap formed in this release",
               lambda frame, rule: (frame["trap_loss_gap"] > rule.trap_margin).where(  # type: ignore[attr-defined]
                   frame["trap_loss_gap"].notna())),
    CellMetric("members_floor_ok", "bool", "both", "reference",
               "merge: the matching `none` merge keeps the other members, `merged_acc_members_none ≥ "
               "{rule.members_floor} × members_expert_acc` (true without other members); always true on finetune",
               lambda frame, rule: ((frame["track"] == "finetune") | (frame["n_members"] <= 1) | (
                   frame["merged_acc_members_none"] >= rule.members_floor  # type: ignore[attr-defined]
                   * frame["members_expert_acc"]))),
)

#: Raw columns the two joins copy from the control and the `none` row (beyond the metrics' own).
CONTROL_COPIES: tuple[str, ...] = ("merged_acc", "acc_before", *ACC_COLUMNS, "acc_after")
REFERENCE_COPIES: tuple[str, ...] = ("utility", "merged_acc", "merged_acc_by_member", "merged_acc_members",
                                     "release_loss_s05", "advantage", "advantage_auc", "gain_b1", "gain_auc")


@dataclass(frozen=True)
class AggregateMetric:
    """A leaderboard number: reduced over one (seed, task)'s cells, then averaged over tasks, then over seeds
    (mean and 95% interval)."""

    name: str
    formula: str
    reduce: Callable[[Frame], float]
    lo: float | None = 0.0
    hi: float | None = 1.0
    over: Literal["valid", "scored"] = "valid"  # the valid cells, or every scored cell (diagnostics)


def _max(column: str, where: Callable[[Frame], pd.Series] | None = None) -> Callable[[Frame], float]:
    def reduce(group: Frame) -> float:
        values = group[column] if where is None else group.loc[where(group), column]
        return float(values.max()) if values.notna().any() else math.nan
    return reduce


def _mean(column: str) -> Callable[[Frame], float]:
    return lambda group: float(group[column].astype("float64").mean())


def _family_metric(family: str) -> AggregateMetric:
    return AggregateMetric(f"worst_{family}", f"`max headline_success` over the valid `{family}` attacks",
                           _max("headline_success", lambda group: group["attack_family"] == family))


AGGREGATE_METRICS: tuple[AggregateMetric, ...] = (
    AggregateMetric("utility", "`mean utility`", _mean("utility")),
    AggregateMetric("utility_retention", "`mean utility_retention`", _mean("utility_retention"), hi=None),
    AggregateMetric("worst_attack_success", "worst case over attacks (the headline): `max headline_success`",
                    _max("headline_success")),
    AggregateMetric("worst_attack_success_raw", "`max attack_success_raw` (unclipped; > 1: easier to attack than "
                    "`none`)", _max("attack_success_raw"), lo=None, hi=None),
    *(_family_metric(family) for family in ATTACK_FAMILIES),
    AggregateMetric("bounded_worst_attack_success", "`max headline_success` over the cells with `members_floor_ok` "
                    "(the same cells for every defense: decided on `none`)",
                    _max("headline_success", lambda group: group["members_floor_ok"])),
    AggregateMetric("mean_attack_success", "`mean headline_success`", _mean("headline_success")),
    AggregateMetric("protection_worst", "`utility_retention × (1 − worst_attack_success)` of the (seed, task)",
                    lambda group: float(group["utility_retention"].mean() * (1.0 - group["headline_success"].max())),
                    hi=None),
    AggregateMetric("legacy_worst_attack_success", "the previous headline, for comparison: `max "
                    "legacy_attack_success`", _max("legacy_attack_success")),
    AggregateMetric("trap_formed_rate", "merge: the share of releases with `trap_formed` (over every scored cell, "
                    "weak attacks included: it describes the release)",
                    lambda group: float(group["trap_formed"].astype("float64").mean()), over="scored"),
)
AGGREGATE_NAMES: tuple[str, ...] = tuple(metric.name for metric in AGGREGATE_METRICS)


def formula_lines(rule: object) -> list[str]:
    """The README's formula list, one bullet per declared metric, with the rule's thresholds filled in."""
    lines = ["**Per cell** (derived columns of `cells.csv`, in the order they are computed):", ""]
    lines += [f"- `{m.name}` ({m.track}): {m.formula.format(rule=rule)}" for m in CELL_METRICS]
    lines += ["", "**Per (seed, task)**, over its valid cells (then averaged over tasks, then over seeds):", ""]
    lines += [f"- `{m.name}`: {m.formula.format(rule=rule)}" for m in AGGREGATE_METRICS]
    return lines
