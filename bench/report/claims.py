"""The claims table of DESIGN §9: each claim of Trap² and PMP, the paper's number, ours under the paper's
own protocol, ours under the strongest adaptive attack, a verdict and its reason — generated from a run
that sweeps the papers' strength knobs (`bench.report.sweeps.has_sweep`).

Verdicts, stated once so a reader can check them by hand:

- **reproduced**: the claim holds under the paper's protocol *and* survives the strongest valid adaptive
  attack (the adaptive attacker's success ≤ ½);
- **partly**: it holds under the paper's protocol only, or only half-way;
- **not**: it does not hold under the paper's protocol at our scale;
- **inconclusive**: the claim's number has a 95 % interval (bench.report.claim_intervals) that straddles the line
  deciding between two of the above, so the run cannot tell them apart.

A merge claim "holds" when the release removes at least half of what the unprotected merge keeps above
the base on T_p (`cut ≥ ½`), half-way from a fifth. Beside it stands `none`'s kept fraction of the
expert's gain under the same protocol: the paper's own unprotected 8-way merge keeps only ≈ 13 % of it,
and a cut of a merge that was already lost protects little. Utility claims hold at retention ≥ 0.95
(half-way ≥ 0.9); PMP's "up to 20 points" holds at a cut of ≥ 10 points (half-way ≥ 5), counting only settings
that keep utility retention ≥ 0.9 (the claim is a cut with the base preserved); "strength set by
ρ" holds when the attacker's success is monotone in ρ within each complement mode and spans ≥ 0.1, and
fails when it spans less and the settings' intervals leave no room for 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.report.claim_intervals import (
    interval_text,
    largest_points_interval,
    level_interval,
    lowest_retention_interval,
    worst_cut_interval,
)
from bench.report.readme import markdown_table
from bench.report.sweeps import paper_protocol_mask, pmp_settings, protocol_method, trap2_reference, trap2_settings
from bench.results import CONTROL_DEFENSE, REFERENCE_DEFENSE

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


def column_mean(frame: pd.DataFrame, column: str) -> float:
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def _release_cells(cells: pd.DataFrame, defense: str, model: str, track: str, release_format: str) -> pd.DataFrame:
    """A release setting's ok cells (every attack on it, valid or not)."""
    return cells[(cells["defense"] == defense) & (cells["model"] == model) & (cells["track"] == track)
                 & (cells["release_format"] == release_format) & (cells["status"] == "ok")]


def _cell_mean(cells: pd.DataFrame, defense: str, model: str, track: str, release_format: str, column: str) -> float:
    """Mean of `column` over a release's ok cells: utility and trap diagnostics are the release's, whether or
    not any attack on it is valid (the leaderboard leaves an invalid row's numbers empty)."""
    return column_mean(_release_cells(cells, defense, model, track, release_format), column)


def _lowest(values) -> float:
    return min((value for value in values if not math.isnan(value)), default=math.nan)


def _board_row(board: pd.DataFrame, defense: str, model: str, track: str, release_format: str) -> pd.Series | None:
    rows = board[(board["defense"] == defense) & (board["model"] == model) & (board["track"] == track)
                 & (board["release_format"] == release_format)]
    return rows.iloc[0] if len(rows) else None


def adaptive_success(board: pd.DataFrame, defense: str, model: str, track: str, release_format: str) -> tuple[float, str]:
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


def _protocol_cells(cells: pd.DataFrame, model: str) -> tuple[pd.DataFrame, pd.Series]:
    """The ok cells of Trap²'s own merge protocol on `model`, and each one's mergekit method."""
    ok = cells[(cells["status"] == "ok") & (cells["model"] == model) & (cells["track"] == "merge")]
    ok = ok[paper_protocol_mask(ok)]
    return ok, protocol_method(ok)


def protocol_merges(cells: pd.DataFrame, defense: str, model: str) -> list[ProtocolMerge]:
    """Every (format, method) of Trap²'s protocol in the run for `defense` on `model`, means over seeds."""
    ok, methods = _protocol_cells(cells, model)
    out = []
    for (release_format, method), rows in ok.groupby([ok["release_format"], methods], sort=True):
        none, trap = rows[rows["defense"] == REFERENCE_DEFENSE], rows[rows["defense"] == defense]
        if none.empty or trap.empty:
            continue
        out.append(ProtocolMerge(release_format, method, column_mean(none, "base_acc"), column_mean(none, "utility"),
                                 column_mean(none, "merged_acc"), column_mean(trap, "merged_acc"),
                                 column_mean(none, "paper_normalised_acc"), column_mean(trap, "paper_normalised_acc")))
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


def _protocol_pairs(cells: pd.DataFrame, defense: str, model: str,
                    merges: list[ProtocolMerge]) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """(none's cells, the defense's cells) of Trap²'s protocol for each (format, method) of `merges`."""
    ok, methods = _protocol_cells(cells, model)
    pairs = []
    for merge in merges:
        rows = ok[(ok["release_format"] == merge.release_format) & (methods == merge.method)]
        pairs.append((rows[rows["defense"] == REFERENCE_DEFENSE], rows[rows["defense"] == defense]))
    return pairs


def _cut_level(cut: float) -> str:
    return "not" if math.isnan(cut) or cut < HALF_WAY else ("partly" if cut < HOLDS else "holds")


def merge_interval_verdict(verdict: str, cut: tuple[float, float], success: tuple[float, float]) -> str:
    """`inconclusive` where the worst cut's interval straddles ⅕ or ½, or, for a cut that holds, the adaptive
    attacker's success interval straddles ½; else the point verdict."""
    if verdict == "not run":
        return verdict
    if level_interval(_cut_level, *cut, verdict) == "inconclusive":
        return "inconclusive"
    low, high = success
    if _cut_level(cut[0]) == "holds" and not math.isnan(low) and low <= SURVIVES < high:
        return "inconclusive"
    return verdict


def _success_interval(board: pd.DataFrame, defense: str, model: str, track: str,
                      formats: list[str]) -> tuple[float, float]:
    """The strongest adaptive success over `formats`, as the leaderboard's interval ends (max of each end)."""
    rows = [_board_row(board, defense, model, track, fmt) for fmt in formats]
    rows = [row for row in rows if row is not None and row["status"] == "ok" and not pd.isna(row["attack_success"])]
    if not rows:
        return math.nan, math.nan
    return max(float(row["attack_success_lo"]) for row in rows), max(float(row["attack_success_hi"]) for row in rows)


def _retention_claim(cells: pd.DataFrame, labels: list[tuple[str, str]], model: str, track: str) -> tuple[str, str]:
    """(verdict, reason) of a "utility preserved" claim over (defense, format) settings, with its interval."""
    frames = [_release_cells(cells, label, model, track, fmt) for label, fmt in labels]
    low = _lowest(_cell_mean(cells, label, model, track, fmt, "utility_retention") for label, fmt in labels)
    lo, hi = lowest_retention_interval(frames)
    verdict = level_interval(lambda v: _level(v, RETAINED, RETAINED_HALF), lo, hi, _level(low, RETAINED, RETAINED_HALF))
    return verdict, f"lowest utility retention {low:.3f}{interval_text(lo, hi, 3)}"


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
        adaptive = {fmt: adaptive_success(board, defense, model, "merge", fmt) for fmt in formats}
        retention = {fmt: _cell_mean(cells, defense, model, "merge", fmt, "utility_retention") for fmt in formats}
        claims.append(Claim("Trap²", model, f"standalone accuracy unchanged ({defense})", "88.1 → 88.1 (ViT-B/32)",
                            ", ".join(f"{fmt}: retention {value:.3f}" for fmt, value in retention.items()) or "–", "–",
                            *_retention_claim(cells, [(defense, fmt) for fmt in formats], model, "merge")))
        for claim, number, chosen in (
                ("8-way LoRA task-arithmetic merge cut", "48.3 → 23.1 (none keeps ≈ 13 %)",
                 [m for m in merges if m.release_format == "adapter" and m.method == "task_arithmetic"]),
                ("every merge method cut (TIES, DARE-TIES)", "cut in every row of its table",
                 [m for m in merges if m.method != "task_arithmetic"]),
                ("also for full fine-tuning", "cut (full-weight experts)",
                 [m for m in merges if m.release_format == "full"])):
            used = sorted({m.release_format for m in chosen})
            verdict, reason = merge_verdict(chosen, [adaptive[fmt][0] for fmt in used if fmt in adaptive])
            cut = worst_cut_interval(_protocol_pairs(cells, defense, model, chosen))
            verdict = merge_interval_verdict(verdict, cut, _success_interval(board, defense, model, "merge", used))
            if chosen:
                reason += f"; worst cut{interval_text(*cut)}"
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
        claims.append(Claim("PMP", model, "base performance preserved", "preserved",
                            ", ".join(f"{label} {value:.3f}" for label, value in retention.items()) or "–", "–",
                            *_retention_claim(cells, [(label, "full") for label in settings["defense"]], model,
                                              "finetune")))
        cuts = {}
        for label in settings["defense"]:
            mine = finetune[(finetune["model"] == model) & (finetune["defense"] == label)]
            by_task = mine.groupby("task").apply(lambda t: 100 * (column_mean(t, "gain_none") - column_mean(t, "gain_b1")),
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
        lo, hi = largest_points_interval([finetune[(finetune["model"] == model) & (finetune["defense"] == label)]
                                          for label in kept])
        verdict = level_interval(lambda v: _level(v, POINTS, POINTS_HALF), lo, hi, verdict)
        success = [(float(ok[label]["attack_success_lo"]), float(ok[label]["attack_success_hi"]))
                   for label in kept if label in ok]
        if verdict == "reproduced" and any(low <= SURVIVES < high for low, high in success):
            verdict = "inconclusive"
        overall = max(cuts.items(), key=lambda item: item[1][0], default=None)
        reason = (f"largest cut at utility retention ≥ {RETAINED_HALF}: {points:.1f}{interval_text(lo, hi, 1)} points "
                  f"({best[0]} on {best[1][1]}), "
                  f"attack success over scratch of those settings ≥ {strongest:.2f}" if best
                  else f"no setting keeps utility retention ≥ {RETAINED_HALF}")
        if overall and (best is None or overall[0] != best[0]):
            reason += (f"; {overall[0]} cuts {overall[1][0]:.1f} points at utility retention "
                       f"{retention.get(overall[0], math.nan):.2f}")
        claims.append(Claim("PMP", model, "fine-tuning gains cut, base preserved", "by up to 20 points",
                            ", ".join(f"{label} {value[0]:.1f} pts" for label, value in cuts.items()) or "–",
                            ", ".join(f"{label} {value:.2f}" for label, value in worst_success.items()) or "–",
                            verdict, reason))
        intervals = {label: (float(row["attack_success_lo"]), float(row["attack_success_hi"]))
                     for label, row in ok.items()}
        claims.append(rho_claim(settings, worst_success, model, intervals))
    return claims


def rho_claim(settings: pd.DataFrame, worst_success: dict[str, float], model: str,
              intervals: dict[str, tuple[float, float]] | None = None) -> Claim:
    """Monotone in ρ within each complement mode and spanning ≥ SPAN; with `intervals` (each setting's success
    interval), either side of the SPAN line must survive them, or the verdict is `inconclusive`: a span whose
    extreme settings' intervals overlap in every mode is not shown to exist, and a span below SPAN is not
    shown to be small while some mode's intervals leave room for one of SPAN (highest upper end minus
    lowest lower end; with two seeds the projected settings' intervals spanned 0.82–1.00)."""
    intervals = intervals or {}
    spans, monotone, texts, separated, room = [], [], [], [], []
    for mode, group in settings.groupby("complement", sort=True):
        series = [(rho, label, worst_success[label])
                  for rho, label in sorted(zip(group["rho"], group["defense"], strict=True)) if label in worst_success]
        if len(series) < 2:
            continue
        values = [value for _, _, value in series]
        steps = [b - a for a, b in zip(values, values[1:], strict=False)]
        spans.append(max(values) - min(values))
        monotone.append(all(s >= 0 for s in steps) or all(s <= 0 for s in steps))
        lowest, highest = (min(series, key=lambda item: item[2])[1], max(series, key=lambda item: item[2])[1])
        if lowest in intervals and highest in intervals:
            separated.append(intervals[lowest][1] < intervals[highest][0])
        bounds = [intervals[label] for _, label, _ in series if label in intervals]
        if len(bounds) == len(series):
            room.append(max(high for _, high in bounds) - min(low for low, _ in bounds))
        texts.append(f"{mode}: " + ", ".join(
            f"ρ {rho:g} → {value:.2f}{interval_text(*intervals.get(label, (math.nan, math.nan)))}"
            for rho, label, value in series))
    if not spans:
        verdict, reason = "not run", "fewer than two mask ratios in one complement mode"
    elif max(spans) < SPAN:
        verdict, reason = "not", f"attack success moves by at most {max(spans):.2f} across ρ"
    elif all(monotone):
        verdict, reason = "reproduced", f"monotone in ρ, spanning up to {max(spans):.2f}"
    else:
        verdict, reason = "partly", f"spans up to {max(spans):.2f} but is not monotone in ρ"
    if verdict in ("reproduced", "partly") and separated and not any(separated):
        verdict, reason = "inconclusive", reason + "; the extreme settings' intervals overlap in every mode"
    if verdict == "not" and room and max(room) >= SPAN:
        verdict, reason = "inconclusive", reason + f", but the settings' intervals leave room for {max(room):.2f}"
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
            "§6 marks it weak (see the weak table): that is the paper's setting, not an attack we count.",
            "Inconclusive: the number's 95 % interval straddles its line (bench.report.claim_intervals: inputs — seed,",
            "task, partners — resampled with replacement, none and the defense on the same inputs; a release's",
            f"utility over seeds only). Seeds in this run: {cells['seed'].nunique()}.", "",
            *markdown_table(header, rows)]
