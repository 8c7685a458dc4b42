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
    """Mean over the other members m of (merged_m − base_m) / (expert_m − base_m); NaN without members or
    where a member's expert did not gain over the base."""
    return pd.Series([_kept_share(json_cell(merged), json_cell(base), json_cell(expert)) for merged, base, expert
                      in zip(frame["merged_acc_by_member"], frame["base_acc_by_member"], frame["expert_acc_by_member"],
                             strict=True)], index=frame.index, dtype="float64")


def _kept_share(merged: dict, base: dict, reference: dict) -> float:
    """Mean over the tasks of `merged` of (merged − base) / (reference − base); NaN unless every task has a
    positive denominator."""
    kept = [(merged[t] - base[t]) / (reference[t] - base[t]) for t in merged
            if t in base and reference.get(t) is not None and reference[t] - base[t] > 0]
    return sum(kept) / len(kept) if kept and len(kept) == len(merged) else math.nan


def _controls_val(frame: Frame) -> list[dict]:
    """Each row's release-free / from-scratch control's attacker_val accuracies ({} where there is none)."""
    column = "val_acc_by_task_control"
    return [json_cell(text) for text in frame[column]] if column in frame else [{} for _ in range(len(frame))]


def val_joint(frame: Frame) -> pd.Series:
    """The attacker's merge objective on attacker_val, the same quantity as `joint_kept` on test: T_p's gain
    over the release-free control, `(val_merged_p − val_control_p) / (val_standalone_p − val_base_p)`, jointly
    (`joint_share`) with the members' kept share against their public experts. The control is the same attack
    without the release, which the attacker can run itself; so the pick estimates what the *release* adds,
    and an attack that reaches T_p from the attacker's own data alone is not picked for it."""
    values = []
    for task, merged, base, standalone, control in zip(frame["task"], frame["val_acc_by_task"],
                                                       frame["val_base_by_task"], frame["val_standalone_by_task"],
                                                       _controls_val(frame), strict=True):
        merged, base, standalone = json_cell(merged), json_cell(base), json_cell(standalone)
        gain = standalone.get(task, math.nan) - base.get(task, math.nan)
        if task not in merged or task not in control or not gain > 0:
            values.append(math.nan)
            continue
        kept_p = (merged[task] - control[task]) / gain
        others = {t: v for t, v in merged.items() if t != task}
        kept_m = _kept_share(others, base, standalone) if others else math.nan
        values.append(float(joint_share(kept_p, kept_m)))
    return pd.Series(values, index=frame.index, dtype="float64")


def val_downstream(frame: Frame) -> pd.Series:
    """The attacker's fine-tuning objective, the same quantity as `advantage` on test: the fine-tuned model's
    attacker_val accuracy on D over the from-scratch control's."""
    return pd.Series([json_cell(scores).get(task, math.nan) - control.get(task, math.nan)
                      for task, scores, control in zip(frame["task"], frame["val_acc_by_task"], _controls_val(frame),
                                                       strict=True)], index=frame.index, dtype="float64")


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


def _budget_or_none(frame: Frame, column: str) -> pd.Series:
    """The same-budget control's `column` where the row names one (`budget_reference`), else `none`'s."""
    named = frame["budget_reference"] != ""
    return frame[f"{column}_budget"].where(named, frame[f"{column}_none"])


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
               "`0.125·gain_b0125 + 0.1875·gain_b025 + 0.375·gain_b05 + 0.25·gain_b1` (gain over acc_before)",
               lambda frame, rule: _gain_auc(frame), -1.0, 1.0),
    # --- the unprotected release of the same input and seed (`none`'s release: any of its rows)
    CellMetric("reference_found", "bool", "both", "reference",
               "`none` has a release of the same (track, model, format, task, seed)",
               lambda frame, rule: frame["_reference"] == "both"),
    CellMetric("utility_none", "float", "both", "reference",
               "`none`'s `utility` at the same seed: on the merge track the unprotected expert's accuracy on T_p "
               "(the fixed reference of `kept_protected`), on the finetune track the unprotected base's",
               _copy("utility", "none"), 0.0, 1.0),
    CellMetric("release_loss_s05_none", "float", "merge", "reference", "`none`'s `release_loss_s05`",
               _copy("release_loss_s05", "none"), 0.0),
    CellMetric("utility_reference", "float", "both", "reference",
               "the utility a release is judged against: the same-budget control's (`budget_reference`, e.g. Trap² at "
               "λ = 0 with the same steps) where the row names one, else `utility_none`",
               lambda frame, rule: _budget_or_none(frame, "utility"), 0.0, 1.0),
    CellMetric("utility_retention", "float", "both", "reference", "`utility / utility_reference`",
               lambda frame, rule: ratio(frame["utility"], frame["utility_reference"]), 0.0),
    CellMetric("paper_normalised_acc", "float", "merge", "reference",
               "Trap²'s own metric, beside ours: the mean over T_p and every other member t of `merged_t / expert_t` "
               "(T_p's expert: `utility_none`; the others' from `expert_acc_by_member`); no control, no base",
               lambda frame, rule: paper_normalised_acc(frame), 0.0),
    CellMetric("kept_protected", "float", "merge", "reference",
               "`(merged_acc − control_acc) / (utility_none − base_acc)`: what the release adds on T_p beyond the "
               "release-free control, as a share of the unprotected expert's own gain (a fixed reference: the same "
               "for every attack configuration of the input)",
               lambda frame, rule: ratio(frame["merged_acc"] - frame["control_acc"],
                                         frame["utility_none"] - frame["base_acc"])),
    CellMetric("kept_members", "float", "merge", "reference",
               "mean over the other members m of `(merged_m − base_m) / (expert_m − base_m)`, from the JSON columns "
               "`merged_acc_by_member`, `base_acc_by_member`, `expert_acc_by_member` (empty without other members)",
               lambda frame, rule: kept_members(frame)),
    CellMetric("joint_kept", "float", "merge", "reference",
               "`min(kept_protected, kept_members)` (kept_protected alone where kept_members is empty; empty where "
               "kept_protected is): the attacker wants one merge with every skill", lambda frame, rule: joint_kept(frame)),
    CellMetric("cell_value", "float", "both", "reference",
               "the cell's absolute value, which the attacker's pick is judged by: merge `joint_kept`, finetune "
               "`advantage_auc`", lambda frame, rule: _by_track(frame, frame["joint_kept"], frame["advantage_auc"])),
    CellMetric("val_objective", "float", "both", "reference",
               "what the attacker picks by: the cell's own quantity on its `attacker_val` split, with references it "
               "can compute itself. Merge: `joint_share` of T_p's `(val_merged_p − val_control_p) / "
               "(val_release_p − val_base_p)` (the control: the same attack without the release) and the members' "
               "`(val_merged_m − val_base_m) / (val_expert_m − val_base_m)` (`val_*_by_task`); finetune: the "
               "fine-tuned model's `attacker_val` accuracy on D minus the from-scratch control's",
               lambda frame, rule: _by_track(frame, val_joint(frame), val_downstream(frame))),
    CellMetric("trap_loss_gap", "float", "merge", "reference",
               "`release_loss_s05` minus the same-budget control's (`budget_reference`) where the row names one, "
               "else minus `release_loss_s05_none`: how much more the release's loss rises at half scale (owner's "
               "held-out tail) than a release trained as long without the trap term",
               lambda frame, rule: frame["release_loss_s05"] - _budget_or_none(frame, "release_loss_s05")),
    CellMetric("trap_formed", "boolean", "merge", "reference",
               "`trap_loss_gap > {rule.trap_margin}` (nats per answer token): a scale trap formed in this release",
               lambda frame, rule: (frame["trap_loss_gap"] > rule.trap_margin).where(  # type: ignore[attr-defined]
                   frame["trap_loss_gap"].notna())),
)

#: Raw columns the two joins copy from the control row and from `none`'s release (beyond the metrics' own).
CONTROL_COPIES: tuple[str, ...] = ("merged_acc", "acc_before", *ACC_COLUMNS, "acc_after", "val_acc_by_task")
REFERENCE_COPIES: tuple[str, ...] = ("utility", "release_loss_s05")


@dataclass(frozen=True)
class AggregateMetric:
    """A leaderboard number: a column of picks.csv reduced over the inputs of one (defense, track, model,
    format), for one pick family, with a paired bootstrap interval (`bench.results.bootstrap`)."""

    name: str
    formula: str
    column: str                      # the picks.csv column reduced
    reduce: Literal["mean", "max"] = "mean"
    family: str = "all"              # whose pick: the overall one (`all`) or one attack family's
    over: Literal["live", "every"] = "live"  # the non-void inputs, or every input (release-side numbers)
    lo: float | None = 0.0
    hi: float | None = 1.0


def _family_metric(family: str) -> AggregateMetric:
    return AggregateMetric(f"success_{family}", f"`mean success` of the `{family}` family's own pick over the "
                           f"inputs where that family is not void", "success", family=family)


AGGREGATE_METRICS: tuple[AggregateMetric, ...] = (
    AggregateMetric("attack_success", "the headline: `mean success` of the attacker's pick over the non-void inputs",
                    "success"),
    AggregateMetric("worst_attack_success", "worst case over inputs: `max success`", "success", reduce="max"),
    AggregateMetric("oracle_attack_success", "upper bound, not an attacker: `mean oracle_success` (the best test "
                    "value of any configuration over `none`'s pick)", "oracle_success"),
    AggregateMetric("attack_success_raw", "`mean success_raw` (unclipped; > 1: easier to attack than `none`)",
                    "success_raw", lo=None, hi=None),
    AggregateMetric("pick_value", "`mean pick_value`: the pick's absolute value (merge `joint_kept`, finetune "
                    "`advantage_auc`)", "pick_value", lo=None, hi=None),
    AggregateMetric("pick_value_none", "`mean none_pick_value`: `none`'s pick on the same inputs", "none_pick_value",
                    lo=None, hi=None),
    *(_family_metric(family) for family in ATTACK_FAMILIES),
    AggregateMetric("protection", "`mean protection` = mean of `utility_retention × (1 − success)` over the non-void "
                    "inputs", "protection", hi=None),
    AggregateMetric("utility", "`mean utility` over every input", "utility", over="every"),
    AggregateMetric("utility_retention", "`mean utility_retention` over every input", "utility_retention",
                    over="every", hi=None),
    AggregateMetric("trap_formed_rate", "merge: the share of inputs whose release has `trap_formed`", "trap_formed",
                    over="every"),
)
AGGREGATE_NAMES: tuple[str, ...] = tuple(metric.name for metric in AGGREGATE_METRICS)


def formula_lines(rule: object) -> list[str]:
    """The README's formula list, one bullet per declared metric, with the rule's thresholds filled in."""
    lines = ["**Per cell** (derived columns of `cells.csv`, in the order they are computed):", ""]
    lines += [f"- `{m.name}` ({m.track}): {m.formula.format(rule=rule)}" for m in CELL_METRICS]
    lines += ["", "**Per input** (picks.csv: one row per input and pick family):", "",
              "- the pick: the configuration with the highest `val_objective` (ties: the first attack, then "
              "attack key); `pick_value` its `cell_value`; `oracle_value` the highest `cell_value`;",
              "- `success_raw = pick_value / none_pick_value` (`none`'s pick on the same input and seed; empty "
              "where that is not positive), `success = clip(success_raw, 0, 1)`, `oracle_success = "
              "clip(oracle_value / none_pick_value, 0, 1)`, `protection = utility_retention × (1 − success)`;",
              f"- `void`: merge `none_pick_value < {rule.min_kept_fraction}`; finetune: `none`'s pick has "
              f"`acc_before > {rule.max_downstream_base}`, `gain_b1 < {rule.min_finetune_gain}` or `advantage < "
              f"{rule.min_scratch_margin}`; `broken`: `success ≥ {rule.broken_line}`.",
              "", "**Per row** of leaderboard.csv, over its inputs (`live`: the non-void ones), with 95% "
              "percentile intervals (`_lo`, `_hi`) of a paired bootstrap over seeds and test examples "
              f"({getattr(rule, 'bootstrap_iters', '?')} resamples):", ""]
    lines += [f"- `{m.name}`: {m.formula.format(rule=rule)}" for m in AGGREGATE_METRICS]
    return lines
