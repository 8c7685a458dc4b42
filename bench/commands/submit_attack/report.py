"""Whether a submitted attack breaks each defense, its README and the filed folder."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.commands.submit import (
    class_name,
    fmt,
    published_boards,
    write_submission,
)
from bench.commands.submit_attack.load import BREAK_MARGIN, REFERENCE, AttackSubmission
from bench.commands.submit_attack.runs import attack_preset, none_verdicts, refusal, run_preset
from bench.presets import Preset
from bench.report.html import write_html_index
from bench.report.leaderboard import README_FILE
from bench.report.readme import markdown_table
from bench.results import LEADERBOARD_COLUMNS, aggregate, validity_failures
from bench.runtime.versions import versions

# ----------------------------------------------------------------------------- comparison


def published_board(leaderboard_dir: Path, preset_name: str) -> tuple[str, pd.DataFrame | None]:
    """The preset's published leaderboard (folder named after the preset) and a note saying where it is
    or why there is none."""
    # The note is published (README, submission.json): it names the folder inside the leaderboard, never a path.
    for folder, board in published_boards(Path(leaderboard_dir)):
        if folder == preset_name:
            return f"published run leaderboard/{folder}", board
    if (Path(leaderboard_dir) / preset_name).is_dir():
        return (f"leaderboard/{preset_name} exists but its leaderboard.csv is missing or does not pass "
                "the current schema"), None
    return f"no published run of preset '{preset_name}' in the leaderboard it was filed into", None


def _board_of(cells: pd.DataFrame) -> pd.DataFrame:

    return aggregate(cells) if not cells.empty else pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))


def _rows_by_key(board: pd.DataFrame | None) -> dict[tuple[str, ...], pd.Series]:
    if board is None:
        return {}
    return {(r["defense"], r["track"], r["model"], r["release_format"]): r for _, r in board.iterrows()}


def _reference_worst(key: tuple[str, ...], zoo: str, published: dict, others: dict, family: str
                     ) -> tuple[float, float, str, str]:
    """(headline success, `family`'s success, the attack picked on the worst input, where from): the published
    row of the same zoo, else this run's other attacks."""
    row, source = published.get(key), "published"
    if row is None or row["zoo_hash"] != zoo:
        row, source = others.get(key), "this run's other attacks"
    if row is None:
        return math.nan, math.nan, "", "no other attack"
    return (float(row["attack_success"]), float(row.get(f"success_{family}", math.nan)),
            str(row["worst_attack"]), source)


def _nanmax(one: float, other: float) -> float:
    values = [value for value in (one, other) if not math.isnan(value)]
    return max(values) if values else math.nan


def compare(cells: pd.DataFrame, name: str, family: str, published: pd.DataFrame | None) -> pd.DataFrame:
    """Per defense × track × model × format (not `none`, not n/a): the published (or this run's) headline
    success, this attack's success (the attacker's pick among its own configurations), and whether it breaks
    the defense (raises the headline by > BREAK_MARGIN)."""
    mine = _board_of(cells[cells["attack"] == name])
    others = _rows_by_key(_board_of(cells[cells["attack"] != name]))
    known = _rows_by_key(published)
    rows = []
    for _, row in mine.iterrows():
        if row["defense"] == REFERENCE or row["status"] == "n/a":
            continue
        key = (row["defense"], row["track"], row["model"], row["release_format"])
        worst, family_worst, attack, source = _reference_worst(key, row["zoo_hash"], known, others, family)
        success = float(row["attack_success"])
        status = "weak" if row["status"] == "invalid" else "ok"
        rows.append([*key, worst, family_worst, attack, source, success, status, _nanmax(worst, success),
                     bool(success - worst > BREAK_MARGIN)])
    columns = ["defense", "track", "model", "release_format", "reference_worst", "reference_family_worst",
               "reference_attack", "reference_source", "success", "status", "new_worst", "breaks"]
    return pd.DataFrame(rows, columns=columns)


def broken(comparison: pd.DataFrame) -> list[str]:
    """'defense (model/format: before → after)' for each broken row."""
    return [f"{r['defense']} ({r['model']}/{r['release_format']}: {fmt(r['reference_worst'])} → {fmt(r['success'])})"
            for _, r in comparison[comparison["breaks"]].iterrows()]


# ----------------------------------------------------------------------------- README and filing


def _verdict_table(verdicts: pd.DataFrame) -> list[str]:

    rows = [[r["model"], r["release_format"], r["task"], r["members"] or "–", r["verdict"], r["why"] or "–"]
            for _, r in verdicts.iterrows()]
    return markdown_table(["model", "format", "task", "other members", "on none", "why (DESIGN §6)"], rows)


def _comparison_table(comparison: pd.DataFrame, family: str) -> list[str]:

    rows = [[r["defense"], r["model"], r["release_format"], fmt(r["reference_worst"]),
             fmt(r["reference_family_worst"]), f"{r['reference_attack'] or '–'} ({r['reference_source']})",
             fmt(r["success"]) if r["status"] == "ok" else "weak on none", fmt(r["new_worst"]),
             "**yes**" if r["breaks"] else "no"] for _, r in comparison.iterrows()]
    header = ["defense", "model", "format", "success before", f"before, {family} family", "worst input's pick (from)",
              "this attack's success", "success now (the higher)", "breaks"]
    return markdown_table(header, rows)


@dataclass
class AttackReport:
    """What the README and submission.json say about one filed attack run."""

    submission: AttackSubmission
    preset: Preset
    verdicts: pd.DataFrame
    comparison: pd.DataFrame
    published_note: str
    problems: list[str]
    failed: pd.DataFrame


def _header(report: AttackReport) -> list[str]:
    sub = report.submission
    return [f"# Attack submission: {sub.name}", "",
            f"- source: {sub.published_source}",
            f"- class: `{class_name(sub)}` — {sub.cls.description}",
            f"- track: {sub.track}; family: {sub.family} (declared {sub.cls.family})",
            f"- config: `{sub.config_json}`",
            f"- code hash: `{sub.code_hash}` (cache key of its cells)",
            f"- preset: `{report.preset.name}` — {report.preset.description}",
            f"- attack success before this attack: {report.published_note} (the table's 'from' column says which "
            "source each row uses: the published run of the same zoo, else this run's other attacks)",
            ""]


def _warnings(report: AttackReport) -> list[str]:
    lines = []
    if report.problems:
        lines += ["**NOT VALID.** The run broke DESIGN §6's validity rule, so its numbers are noise:", "",
                  *(f"- {p}" for p in report.problems), ""]
    if not (report.verdicts["verdict"] == "valid").any():
        lines += ["**Weak on every input against `none`** (filed with --allow-weak): its successes are not numbers.", ""]
    if not report.failed.empty:
        lines += [f"**{len(report.failed)} of the attack's cells failed**; first error: "
                  f"`{report.failed['error'].iloc[0]}`", ""]
    return lines


def render_attack_readme(report: AttackReport, run_readme: str) -> str:
    breaks = broken(report.comparison)
    lines = [*_header(report), *_warnings(report), "## Validation on `none`", "",
             "Per input, whether the attack works against the unprotected release (DESIGN §6); a weak input still counts",
             "when the attacker's pick chooses it.", "", *_verdict_table(report.verdicts), "", "## Against the defenses", "",
             f"A defense is *broken* when this attack's success exceeds its success before it by more than "
             f"{BREAK_MARGIN}. `none` is the reference and is not listed.", "",
             f"**Breaks:** {', '.join(breaks)}." if breaks else "**Breaks no defense** of the preset.", ""]
    lines += (_comparison_table(report.comparison, report.submission.family) if not report.comparison.empty
              else ["No defense of the preset other than `none` supports this attack's track."])
    body = run_readme.split("\n", 1)[1] if "\n" in run_readme else ""
    return "\n".join([*lines, "", "## Results of the run (every attack, this one included)", "", body.lstrip("\n")])


def attack_metadata(report: AttackReport, cells: int) -> dict[str, Any]:

    sub = report.submission
    return {"kind": "attack", "name": sub.name, "class": class_name(sub), "source": sub.published_source,
            "source_kind": sub.kind, "track": sub.track, "family": sub.family, "declared_family": sub.cls.family,
            "config": json.loads(sub.config_json), "code_hash": sub.code_hash, "preset": report.preset.name,
            "valid": not report.problems, "validity_problems": report.problems,
            "valid_on_none": bool((report.verdicts["verdict"] == "valid").any()),
            "on_none": json.loads(report.verdicts.to_json(orient="records")),
            "breaks": sorted(set(report.comparison.loc[report.comparison["breaks"], "defense"])),
            "comparison": json.loads(report.comparison.to_json(orient="records")),
            "worst_cases_from": report.published_note, "cells": cells, "failed_cells": len(report.failed),
            "versions": versions()}


@dataclass
class AttackResult:
    """What `lockbench submit --attack` reports."""

    report: AttackReport
    run_dir: Path
    target: Path | None
    refused: str | None = None

    @property
    def breaks(self) -> list[str]:
        return broken(self.report.comparison)


def run_attack_submission(submission: AttackSubmission, preset: Preset, root: Path, run_dir: Path,
                          leaderboard_dir: Path, folder: str, executor: str = "serial", allow_invalid: bool = False,
                          allow_weak: bool = False, salt: str = "") -> AttackResult:
    """Run the attack against the preset's defenses of its track and file `leaderboard/submissions/FOLDER/`.

    Nothing is filed when the attack is weak on every input (unless `allow_weak`) or the run breaks the
    validity rule (unless `allow_invalid`): those numbers are noise (DESIGN §6).
    """

    cells = run_preset(attack_preset(preset, submission), submission, root, run_dir, executor, salt)
    mine = cells[cells["attack"] == submission.name]
    verdicts = none_verdicts(cells, submission.name)
    note, board = published_board(leaderboard_dir, preset.name)
    problems = validity_failures(cells)
    report = AttackReport(submission, preset, verdicts, compare(cells, submission.name, submission.family, board),
                          note, problems, mine[mine["status"] == "failed"])
    refused = refusal(verdicts, submission.name, preset.name, allow_weak)
    if refused or (problems and not allow_invalid):
        return AttackResult(report, run_dir, None, refused)
    readme = render_attack_readme(report, (run_dir / README_FILE).read_text())
    target = write_submission(Path(leaderboard_dir) / "submissions" / folder, run_dir, readme,
                              attack_metadata(report, len(mine)))
    write_html_index(Path(leaderboard_dir))
    return AttackResult(report, run_dir, target)
