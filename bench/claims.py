"""The claims table of DESIGN §9: each claim of Trap² and PMP, the paper's number, ours under the paper's
own protocol, ours under the strongest adaptive attack, a verdict and its reason — generated from a run
that sweeps the papers' strength knobs (`bench.sweeps.has_sweep`).

Verdicts, stated once so a reader can check them by hand:

- **reproduced**: the claim holds under the paper's protocol *and* survives the strongest valid adaptive
  attack (the adaptive attacker's success ≤ ½);
- **partly**: it holds under the paper's protocol only, or only half-way;
- **not**: it does not hold under the paper's protocol at our scale.

A merge claim "holds" when the release removes at least half of what the unprotected merge keeps above
the base on T_p (`cut ≥ ½`), half-way from a fifth. Beside it stands `none`'s kept fraction of the
expert's gain under the same protocol: the paper's own unprotected 8-way merge keeps only ≈ 13 % of it,
and a cut of a merge that was already lost protects little. Utility claims hold at retention ≥ 0.95
(half-way ≥ 0.9); PMP's "up to 20 points" holds at a cut of ≥ 10 points (half-way ≥ 5), counting only settings
that keep utility retention ≥ 0.9 (the claim is a cut with the base preserved); "strength set by
ρ" holds when the attacker's success is monotone in ρ within each complement mode and spans ≥ 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.readme import markdown_table
from bench.results import CONTROL_DEFENSE, REFERENCE_DEFENSE
from bench.sweeps import paper_protocol_mask, pmp_settings, protocol_method, trap2_reference, trap2_settings

HOLDS, HALF_WAY, SURVIVES = 0.5, 0.2, 0.5
RETAINED, RETAINED_HALF = 0.95, 0.9
POINTS, POINTS_HALF = 10.0, 5.0
SPAN = 0.1


@dataclass(frozen=True)
class Claim:
    paper: str
    model: str
    claim: str
    paper_number: str
    ours_protocol: str
    ours_adaptive: str
    verdict: str
    reason: str


def _mean(frame: pd.DataFrame, column: str) -> float:
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def _cell_mean(cells: pd.DataFrame, defense: str, model: str, track: str, release_format: str, column: str) -> float:
    """Mean of `column` over a release's ok cells: utility and trap diagnostics are the release's, whether or
    not any attack on it is valid (the leaderboard leaves an invalid row's numbers empty)."""
    rows = cells[(cells["defense"] == defense) & (cells["model"] == model) & (cells["track"] == track)
                 & (cells["release_format"] == release_format) & (cells["status"] == "ok")]
    return _mean(rows, column)


def _lowest(values) -> float:
    return min((value for value in values if not math.isnan(value)), default=math.nan)


def _board_row(board: pd.DataFrame, defense: str, model: str, track: str, release_format: str) -> pd.Series | None:
    rows = board[(board["defense"] == defense) & (board["model"] == model) & (board["track"] == track)
                 & (board["release_format"] == release_format)]
    return rows.iloc[0] if len(rows) else None


def _adaptive(board: pd.DataFrame, defense: str, model: str, track: str, release_format: str) -> tuple[float, str]:
    """(the adaptive attacker's success: its pick on `attacker_val` over `none`'s, mean over inputs; its text)."""
    row = _board_row(board, defense, model, track, release_format)
    if row is None or row["status"] != "ok" or pd.isna(row["attack_success"]):
        return math.nan, f"{release_format}: {'no row' if row is None else row['status']}"
    return float(row["attack_success"]), (f"{release_format}: {row['attack_success']:.2f} "
                                          f"[{row['attack_success_lo']:.2f}, {row['attack_success_hi']:.2f}] "
                                          f"(worst input: {row['worst_attack'] or '–'})")


@dataclass(frozen=True)
class ProtocolMerge:
    """Trap²'s protocol on one model × format × merge method, `none` against the Trap² release."""

    release_format: str
    method: str
    base: float
    expert_none: float
    merged_none: float
    merged_trap: float
    normalised_none: float
    normalised_trap: float

    @property
    def kept_none(self) -> float:
        gain = self.expert_none - self.base
        return (self.merged_none - self.base) / gain if gain > 0 else math.nan

    @property
    def cut(self) -> float:
        margin = self.merged_none - self.base
        return (self.merged_none - self.merged_trap) / margin if margin > 0 else math.nan

    def text(self) -> str:
        return (f"{self.release_format} {self.method}: {self.merged_none:.2f} → {self.merged_trap:.2f} on T_p (base "
                f"{self.base:.2f}, expert {self.expert_none:.2f}; none keeps {self.kept_none:.0%}); normalised "
                f"{self.normalised_none:.2f} → {self.normalised_trap:.2f}")


def protocol_merges(cells: pd.DataFrame, defense: str, model: str) -> list[ProtocolMerge]:
    """Every (format, method) of Trap²'s protocol in the run for `defense` on `model`, means over seeds."""
    ok = cells[(cells["status"] == "ok") & (cells["model"] == model) & (cells["track"] == "merge")]
    ok = ok[paper_protocol_mask(ok)]
    methods = protocol_method(ok)
    out = []
    for (release_format, method), rows in ok.groupby([ok["release_format"], methods], sort=True):
        none, trap = rows[rows["defense"] == REFERENCE_DEFENSE], rows[rows["defense"] == defense]
        if none.empty or trap.empty:
            continue
        out.append(ProtocolMerge(release_format, method, _mean(none, "base_acc"), _mean(none, "utility"),
                                 _mean(none, "merged_acc"), _mean(trap, "merged_acc"),
                                 _mean(none, "paper_normalised_acc"), _mean(trap, "paper_normalised_acc")))
    return out


def merge_verdict(merges: list[ProtocolMerge], adaptive: list[float]) -> tuple[str, str]:
    if not merges:
        return "not run", "the run holds no cell of this protocol"
    worst = min(merges, key=lambda m: -math.inf if math.isnan(m.cut) else m.cut)
    strongest = max((a for a in adaptive if not math.isnan(a)), default=math.nan)
    where = f"{worst.release_format} {worst.method}"
    if math.isnan(worst.cut):
        return "not", f"{where}: the unprotected merge does not beat the base on T_p, so there is nothing to cut"
    kept = f"none's merge keeps {worst.kept_none:.0%} of the expert's gain"
    if worst.cut < HALF_WAY:
        return "not", f"{where}: the release cuts only {worst.cut:.0%} of the merge's margin over the base ({kept})"
    if worst.cut < HOLDS:
        return "partly", f"{where}: the release cuts {worst.cut:.0%} of the merge's margin over the base ({kept})"
    if math.isnan(strongest) or strongest > SURVIVES:
        beaten = "no valid adaptive attack was measured" if math.isnan(strongest) else (
            f"an adaptive attack still reaches success {strongest:.2f}")
        return "partly", f"the protocol's merge is cut by ≥ {worst.cut:.0%} ({kept}), but {beaten}"
    return "reproduced", f"cut by ≥ {worst.cut:.0%} ({kept}) and every adaptive attack stays ≤ {strongest:.2f}"


def _level(value: float, full: float, half: float) -> str:
    return "not" if math.isnan(value) or value < half else ("partly" if value < full else "reproduced")


def trap2_claims(cells: pd.DataFrame, board: pd.DataFrame) -> list[Claim]:
    defense = trap2_reference(trap2_settings(cells))
    if defense is None:
        return []
    claims = []
    for model in sorted(cells.loc[cells["defense"] == defense, "model"].unique()):
        formats = sorted(cells.loc[(cells["defense"] == defense) & (cells["model"] == model), "release_format"].unique())
        merges = protocol_merges(cells, defense, model)
        adaptive = {fmt: _adaptive(board, defense, model, "merge", fmt) for fmt in formats}
        retention = {fmt: _cell_mean(cells, defense, model, "merge", fmt, "utility_retention") for fmt in formats}
        low = _lowest(retention.values())
        claims.append(Claim("Trap²", model, f"standalone accuracy unchanged ({defense})", "88.1 → 88.1 (ViT-B/32)",
                            ", ".join(f"{fmt}: retention {value:.3f}" for fmt, value in retention.items()) or "–", "–",
                            _level(low, RETAINED, RETAINED_HALF), f"lowest utility retention {low:.3f}"))
        for claim, number, chosen in (
                ("8-way LoRA task-arithmetic merge cut", "48.3 → 23.1 (none keeps ≈ 13 %)",
                 [m for m in merges if m.release_format == "adapter" and m.method == "task_arithmetic"]),
                ("every merge method cut (TIES, DARE-TIES)", "cut in every row of its table",
                 [m for m in merges if m.method != "task_arithmetic"]),
                ("also for full fine-tuning", "cut (full-weight experts)",
                 [m for m in merges if m.release_format == "full"])):
            used = sorted({m.release_format for m in chosen})
            verdict, reason = merge_verdict(chosen, [adaptive[fmt][0] for fmt in used if fmt in adaptive])
            claims.append(Claim("Trap²", model, f"{claim} ({defense})", number,
                                "; ".join(m.text() for m in chosen) or "–",
                                "; ".join(adaptive[fmt][1] for fmt in used if fmt in adaptive) or "–", verdict, reason))
        rates = {fmt: _cell_mean(cells, defense, model, "merge", fmt, "trap_formed") for fmt in formats}
        known = [value for value in rates.values() if not math.isnan(value)]
        verdict = "not" if not known or max(known) == 0 else ("reproduced" if min(known) >= 1.0 else "partly")
        claims.append(Claim("Trap²", model, f"the update fails when re-scaled: a trap forms ({defense})",
                            "its mechanism (loss at s ≠ 1 raised)",
                            ", ".join(f"{fmt}: trap formed in {value:.0%} of releases" for fmt, value in rates.items()),
                            "–", verdict, "share of releases whose loss at half scale exceeds none's by the margin"))
    return claims


def with_none_gain(cells: pd.DataFrame) -> pd.DataFrame:
    """Finetune cells with `gain_none`: `none`'s `gain_b1` for the same attack configuration on the same
    model, task and seed (what the paper's "gains cut by" compares against)."""
    key = ["model", "release_format", "task", "attack_key", "seed"]
    none = cells[cells["defense"] == REFERENCE_DEFENSE][[*key, "gain_b1"]].drop_duplicates(key)
    return cells.merge(none.rename(columns={"gain_b1": "gain_none"}), on=key, how="left")


def pmp_claims(cells: pd.DataFrame, board: pd.DataFrame) -> list[Claim]:
    settings = pmp_settings(cells)
    if settings.empty:
        return []
    claims = []
    finetune = with_none_gain(cells[(cells["track"] == "finetune") & (cells["status"] == "ok")
                                    & (cells["defense"] != CONTROL_DEFENSE)])
    for model in sorted(finetune.loc[finetune["defense"].isin(settings["defense"]), "model"].unique()):
        rows = {label: _board_row(board, label, model, "finetune", "full") for label in settings["defense"]}
        ok = {label: row for label, row in rows.items() if row is not None and row["status"] == "ok"}
        retention = {label: _cell_mean(cells, label, model, "finetune", "full", "utility_retention")
                     for label in settings["defense"]}
        low = _lowest(retention.values())
        claims.append(Claim("PMP", model, "base performance preserved", "preserved",
                            ", ".join(f"{label} {value:.3f}" for label, value in retention.items()) or "–", "–",
                            _level(low, RETAINED, RETAINED_HALF), f"lowest utility retention {low:.3f}"))
        cuts = {}
        for label in settings["defense"]:
            mine = finetune[(finetune["model"] == model) & (finetune["defense"] == label)]
            by_task = mine.groupby("task").apply(lambda t: 100 * (_mean(t, "gain_none") - _mean(t, "gain_b1")),
                                                 include_groups=False).dropna()
            if len(by_task):
                cuts[label] = (float(by_task.max()), str(by_task.idxmax()))
        worst_success = {label: float(row["attack_success"]) for label, row in ok.items()}
        # the claim is a cut *with the base preserved*: a setting that loses a tenth of its utility cuts
        # fine-tuning gains by breaking the base, so it does not count for the verdict (it is still listed)
        kept = {label: value for label, value in cuts.items() if retention.get(label, math.nan) >= RETAINED_HALF}
        best = max(kept.items(), key=lambda item: item[1][0], default=None)
        strongest = min((worst_success[label] for label in kept if label in worst_success), default=math.nan)
        points = best[1][0] if best else math.nan
        verdict = _level(points, POINTS, POINTS_HALF)
        if verdict == "reproduced" and not strongest <= SURVIVES:
            verdict = "partly"
        overall = max(cuts.items(), key=lambda item: item[1][0], default=None)
        reason = (f"largest cut at utility retention ≥ {RETAINED_HALF}: {points:.1f} points ({best[0]} on {best[1][1]}), "
                  f"attack success over scratch of those settings ≥ {strongest:.2f}" if best
                  else f"no setting keeps utility retention ≥ {RETAINED_HALF}")
        if overall and (best is None or overall[0] != best[0]):
            reason += (f"; {overall[0]} cuts {overall[1][0]:.1f} points at utility retention "
                       f"{retention.get(overall[0], math.nan):.2f}")
        claims.append(Claim("PMP", model, "fine-tuning gains cut, base preserved", "by up to 20 points",
                            ", ".join(f"{label} {value[0]:.1f} pts" for label, value in cuts.items()) or "–",
                            ", ".join(f"{label} {value:.2f}" for label, value in worst_success.items()) or "–",
                            verdict, reason))
        claims.append(rho_claim(settings, worst_success, model))
    return claims


def rho_claim(settings: pd.DataFrame, worst_success: dict[str, float], model: str) -> Claim:
    spans, monotone, texts = [], [], []
    for mode, group in settings.groupby("complement", sort=True):
        series = [(rho, worst_success[label]) for rho, label in sorted(zip(group["rho"], group["defense"], strict=True))
                  if label in worst_success]
        if len(series) < 2:
            continue
        values = [value for _, value in series]
        steps = [b - a for a, b in zip(values, values[1:], strict=False)]
        spans.append(max(values) - min(values))
        monotone.append(all(s >= 0 for s in steps) or all(s <= 0 for s in steps))
        texts.append(f"{mode}: " + ", ".join(f"ρ {rho:g} → {value:.2f}" for rho, value in series))
    if not spans:
        verdict, reason = "not run", "fewer than two mask ratios in one complement mode"
    elif max(spans) < SPAN:
        verdict, reason = "not", f"attack success moves by at most {max(spans):.2f} across ρ"
    elif all(monotone):
        verdict, reason = "reproduced", f"monotone in ρ, spanning up to {max(spans):.2f}"
    else:
        verdict, reason = "partly", f"spans up to {max(spans):.2f} but is not monotone in ρ"
    return Claim("PMP", model, "strength set by ρ", "ρ sets the strength", "; ".join(texts) or "–",
                 "(attack success per ρ, left)", verdict, reason)


def claims_table(cells: pd.DataFrame, board: pd.DataFrame) -> list[Claim]:
    return trap2_claims(cells, board) + pmp_claims(cells, board)


def claims_section(cells: pd.DataFrame, board: pd.DataFrame) -> list[str]:
    """README lines: the claims table and how its verdicts are decided ([] when there is no claim)."""
    claims = claims_table(cells, board)
    if not claims:
        return []
    header = ["paper", "model", "claim", "paper's number", "ours, paper's protocol", "ours, strongest adaptive",
              "verdict", "reason"]
    rows = [[c.paper, c.model, c.claim, c.paper_number, c.ours_protocol, c.ours_adaptive, f"**{c.verdict}**", c.reason]
            for c in claims]
    return ["## Claims against the papers", "",
            "Reproduced: holds under the paper's protocol and the adaptive attacker's success stays ≤ ½;",
            "partly: holds under the protocol only, or half-way; not: fails under the paper's own protocol. A merge",
            "claim holds when the release removes ≥ ½ of what none's merge keeps above the base on T_p (half-way",
            "≥ ⅕); none's own kept fraction stands beside it. The paper's protocol is reported even where DESIGN",
            "§6 marks it weak (see the weak table): that is the paper's setting, not an attack we count.", "",
            *markdown_table(header, rows)]


def trap2_sweep_rows(cells: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """Trap²'s λ × budget sweep, one row per model × format × setting: whether the trap formed, the release's
    half-scale loss against none's and against λ = 0 at the same budget (the control for everything but the
    trap term), utility retention, attack success and the paper protocol's merged accuracy."""
    settings = trap2_settings(cells)
    merge = cells[(cells["track"] == "merge") & (cells["status"] == "ok")]
    protocol = merge[paper_protocol_mask(merge) & (protocol_method(merge) == "task_arithmetic")]
    rows = []
    for setting in settings.itertuples(index=False):
        same_budget = settings[(settings["lambda_"] == 0) & (settings["steps"].fillna(-1) ==
                                                            (-1 if pd.isna(setting.steps) else setting.steps))]
        for (model, release_format), mine in merge[merge["defense"] == setting.defense].groupby(
                ["model", "release_format"], sort=True):
            control = merge[merge["defense"].isin(same_budget["defense"]) & (merge["model"] == model)
                            & (merge["release_format"] == release_format)]
            rows.append({
                "model": model, "format": release_format, "lambda_": setting.lambda_,
                "steps": "zoo" if pd.isna(setting.steps) else int(setting.steps),
                "defense": setting.defense,
                "trap_formed": _mean(mine, "trap_formed"),
                "gap_vs_none": _mean(mine, "trap_loss_gap"),
                "gap_vs_lambda0": _mean(mine, "release_loss_s05") - _mean(control, "release_loss_s05")
                if len(control) else math.nan,
                "utility_retention": _mean(mine, "utility_retention"),
                "attack_success": _adaptive(board, setting.defense, model, "merge", release_format)[0],
                "protocol_merged_acc": _mean(protocol[(protocol["defense"] == setting.defense) & (protocol["model"] == model)
                                                      & (protocol["release_format"] == release_format)], "merged_acc"),
            })
    return pd.DataFrame(rows)


def trap2_sweep_section(cells: pd.DataFrame, board: pd.DataFrame) -> list[str]:
    table = trap2_sweep_rows(cells, board)
    if len(trap2_settings(cells)) < 2 or table.empty:
        return []
    table = table.assign(budget=table["steps"].map(lambda s: -1 if s == "zoo" else s)).sort_values(
        ["model", "format", "budget", "lambda_"], kind="mergesort")

    def number(value: float) -> str:
        return "–" if pd.isna(value) else f"{value:.3f}"

    rows = [[r.model, r.format, str(r.steps), f"{r.lambda_:g}", r.defense, number(r.trap_formed), number(r.gap_vs_none),
             number(r.gap_vs_lambda0), number(r.utility_retention), number(r.attack_success),
             number(r.protocol_merged_acc)] for r in table.itertuples(index=False)]
    return ["## Trap²: λ × training budget", "",
            "`trap formed`: share of releases whose answer loss at half scale exceeds none's by the margin; the",
            "gaps are that loss minus none's and minus λ = 0's at the same budget (nats per answer token; λ = 0",
            "runs Trap²'s code without the trap term); the last column is the paper protocol's 8-way task-",
            "arithmetic merged accuracy on T_p.", "",
            *markdown_table(["model", "format", "steps", "λ", "label", "trap formed", "gap vs none", "gap vs λ = 0",
                             "utility retention", "attack success", "protocol merged acc"], rows)]
