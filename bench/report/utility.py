"""Utility tasks where a reader looks: the run's README, `leaderboard.csv` and the page.

Why: a utility task (the grid's `utility_tasks`: scored only, never trained) says whether a protection
costs general capability. The cells carry its accuracy as JSON (`utility_tasks_acc` for the release,
`base_utility_tasks_acc` for the public base), which no reader of the README or the page ever saw. Here
they become one row per defense × track × model × format × utility task: the release's accuracy, the
base's, and the retention `release / base` (how much of the base's capability the release keeps).

Each release is counted once: its cells (one per attack, member set, …) repeat the same scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bench.results import CONTROL_DEFENSE

GROUP = ["defense", "track", "model", "release_format"]
#: What identifies one release among the cells (bench.harness.grid.DefenseJob): the merge track's task is
#: the protected one; a finetune release serves every downstream task.
RELEASE = [*GROUP, "defense_config", "seed", "release_task"]
SUMMARY_COLUMNS = [*GROUP, "utility_task", "release_acc", "base_acc", "retention", "n_releases"]
#: leaderboard.csv's columns for them: JSON {utility task: mean} per row (filled where the schema has them).
BOARD_COLUMNS = ("utility_tasks_acc", "utility_tasks_retention")


def _scores(text: object) -> dict[str, float]:
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) else {}


def retention(release: float, base: float) -> float:
    """Share of the base's accuracy the release keeps; not measurable (NaN) when the base scores 0."""
    return release / base if base > 0 and not math.isnan(release) else math.nan


def utility_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per defense × track × model × format × utility task (controls left out), means over releases."""
    if "utility_tasks_acc" not in cells.columns or cells.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    ok = cells[(cells["status"] == "ok") & (cells["defense"] != CONTROL_DEFENSE)]
    ok = ok.assign(release_task=ok["task"].where(ok["track"] == "merge", ""))
    releases = ok.drop_duplicates(RELEASE)
    rows = []
    for key, group in releases.groupby(GROUP, sort=True):
        mine = [_scores(text) for text in group["utility_tasks_acc"]]
        bases = [_scores(text) for text in group["base_utility_tasks_acc"]]
        for task in sorted({name for scores in mine for name in scores}):
            values = [scores[task] for scores in mine if task in scores]
            base_values = [scores[task] for scores in bases if task in scores]
            release = sum(values) / len(values)
            base = sum(base_values) / len(base_values) if base_values else math.nan
            rows.append([*key, task, release, base, retention(release, base), len(values)])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def board_columns(board: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """BOARD_COLUMNS aligned with `board`'s rows: JSON {utility task: release accuracy} and {task: retention}
    (sorted keys; empty where a row has no utility score)."""
    summary = utility_summary(cells)
    by_row: dict[tuple, dict[str, dict[str, float | None]]] = {}
    for _, r in summary.iterrows():
        entry = by_row.setdefault(tuple(r[GROUP]), {"acc": {}, "retention": {}})
        entry["acc"][r["utility_task"]] = round(float(r["release_acc"]), 6)
        entry["retention"][r["utility_task"]] = None if math.isnan(r["retention"]) else round(float(r["retention"]), 6)
    values = [by_row.get(tuple(row[GROUP])) for _, row in board.iterrows()]
    return pd.DataFrame({
        "utility_tasks_acc": [json.dumps(v["acc"], sort_keys=True) if v else "" for v in values],
        "utility_tasks_retention": [json.dumps(v["retention"], sort_keys=True) if v else "" for v in values],
    }, index=board.index)


def with_board_columns(board: pd.DataFrame, cells: pd.DataFrame, declared: tuple[str, ...]) -> pd.DataFrame:
    """`board` with those BOARD_COLUMNS filled that the leaderboard schema declares (`declared`)."""
    wanted = [name for name in BOARD_COLUMNS if name in declared]
    if not wanted:
        return board
    return board.assign(**{name: board_columns(board, cells)[name] for name in wanted})


def _number(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def readme_section(cells: pd.DataFrame, markdown_table: Callable[[list[str], list[list[str]]], list[str]]
                   ) -> list[str]:
    """The README's "Utility tasks" section, or nothing for a run without utility tasks; `markdown_table` is
    the README's own table renderer (bench.report.readme), passed in so this module depends on no report."""
    summary = utility_summary(cells)
    if summary.empty:
        return []
    rows = [[r["defense"], r["track"], r["model"], r["release_format"], r["utility_task"], _number(r["release_acc"]),
             _number(r["base_acc"]), _number(r["retention"])] for _, r in summary.iterrows()]
    return ["## Utility tasks", "",
            "Scored only, never trained: lm-eval accuracy of each release and of the public base, means over",
            "releases; retention = release / base (how much of the base's capability the release keeps).", "",
            *markdown_table(["defense", "track", "model", "format", "utility task", "release accuracy",
                             "base accuracy", "retention"], rows), ""]


def run_summary(folder: Path) -> pd.DataFrame:
    """The utility summary of a published run folder, from its cells.csv (empty when it has none)."""
    path = Path(folder) / "cells.csv"
    wanted = {*GROUP, "defense_config", "seed", "task", "status", "utility_tasks_acc", "base_utility_tasks_acc"}
    try:
        cells = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda name: name in wanted)
    except (OSError, ValueError, pd.errors.ParserError):
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return utility_summary(cells) if wanted <= set(cells.columns) else pd.DataFrame(columns=SUMMARY_COLUMNS)


def html_section(leaderboard_dir: Path, runs: list[str], html_table: Callable[..., str], Column: type) -> list[str]:
    """The page's utility-task table over these runs, or nothing when none of them has utility tasks; the
    page's own table renderer and column type (bench.report.html) are passed in."""
    rows = [{"run": run, **record} for run in runs
            for record in run_summary(Path(leaderboard_dir) / run).to_dict("records")]
    if not rows:
        return []
    columns = (Column("run", "run"), Column("defense", "defense"), Column("track", "track"), Column("model", "model"),
               Column("release_format", "format"), Column("utility_task", "utility task"),
               Column("release_acc", "release accuracy", True), Column("base_acc", "base accuracy", True),
               Column("retention", "retention", True))
    return ['<h2 id="utility-tasks">Utility tasks: accuracy of each release and retention against the public '
            "base</h2>", html_table("utility-tasks", rows, columns)]
