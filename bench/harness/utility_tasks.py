"""Scored-only utility tasks (the grid's `utility_tasks` role): capabilities a release must keep, never trained.

A preset names them as the other task roles are named (`tasks.lmeval.TaskSource`): a stock lm-eval task by
its name, an existing lm-eval task YAML, or local JSONL. lm-eval scores them on each release and on the
public base; the cells get both as JSON columns (`utility_tasks_acc`, `base_utility_tasks_acc`), so a reader
sees whether a protection costs general capability beside the tasks the benchmark trains.

The scores are cached per release (and per base) under `scores/`, keyed by the task sources, apart from the
cells: adding a utility task to a preset re-scores releases, it re-runs no attack.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import Progress

from bench.config import ConfigError
from bench.harness.context import scored_tasks
from bench.harness.grid import Cell, DefenseJob
from bench.harness.score_cache import cached_scores
from bench.harness.stages import load_release
from bench.presets import yaml_error_in, yaml_error_line
from bench.runtime.progress_log import PlainProgress
from bench.runtime.storage import content_hash
from bench.toolkit.evaluate import score
from tasks.lmeval import MaterializedTasks, TaskSource, materialize, task_manager

if TYPE_CHECKING:
    from bench.harness.context import HarnessContext
    from bench.presets import Preset


def utility_sources(preset: Preset) -> list[TaskSource]:
    return list(preset.grid.utility_tasks) if preset.grid else []


def sources_key(sources: list[TaskSource]) -> str:
    """What the cached scores depend on: each source as written, and a YAML's or JSONL's bytes."""
    parts = []
    for source in sources:
        path = source.lm_eval_yaml or source.jsonl
        files = sorted(Path(path).rglob("*")) if path and Path(path).is_dir() else [Path(path)] if path else []
        parts.append([source.model_dump_json(), [hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()]])
    return json.dumps(parts)


def check_utility_tasks(preset: Preset, root: Path) -> MaterializedTasks | None:
    """Materialise the utility tasks and make sure lm-eval knows every one, before any training.

    A missing file, a YAML that is not one lm-eval task, or a stock name lm-eval does not index is one
    ConfigError line naming the task."""
    sources = utility_sources(preset)
    if not sources:
        return None
    clashes = sorted({s.name for s in sources} & set(scored_tasks(preset)))
    if clashes:
        raise ConfigError(f"utility_tasks {clashes} are also trained by the zoo or the grid; a utility task is "
                          "scored only, so give it another name")
    try:
        tasks = materialize(sources, preset.zoo.seed, preset.zoo.split_sizes, Path(root) / "tasks" / "utility")
    except (ValueError, FileNotFoundError, KeyError) as error:
        syntax = yaml_error_in(error)
        if syntax is not None:  # the parser's position is on a later line of its message: say it first
            raise ConfigError(f"utility_tasks: {yaml_error_line(syntax)}") from error
        raise ConfigError(f"utility_tasks: {error}".splitlines()[0]) from error
    manager = task_manager(tasks.include_path, tasks.needs_default_tasks)
    known = set(manager.all_tasks)
    for source in sources:
        name = tasks.lm_eval_name(source.name)
        if name not in known:
            where = (f"its YAML {source.lm_eval_yaml}" if source.lm_eval_yaml else
                     "stock lm-eval tasks" if source.kind == "stock" else "its files")
            raise ConfigError(f"utility task '{source.name}': lm-eval has no task '{name}' (looked in {where})")
    return tasks


def score_utility(ctx: HarnessContext, tasks: MaterializedTasks, job: DefenseJob | None, model_name: str
                  ) -> dict[str, float]:
    """lm-eval accuracy of the release of `job` (None: the public base of `model_name`) on every utility task."""

    sources = utility_sources(ctx.preset)
    subject = job.key if job is not None else f"base-{model_name}"

    def compute() -> dict[str, float]:
        model = load_release(ctx, job) if job is not None else ctx.zoo.load_base(model_name)
        return score(model, ctx.zoo.tokenizer(model_name), [s.name for s in sources], tasks)

    return cached_scores(ctx, f"utility-{content_hash(subject)}", subject + sources_key(sources), compute)


def add_utility_scores(ctx: HarnessContext, tasks: MaterializedTasks | None, rows: list[dict[str, Any]],
                       cells: list[Cell], console: Console) -> None:
    """Fill each ok row's `utility_tasks_acc` (its release) and `base_utility_tasks_acc` (the public base)."""
    if tasks is None:
        return
    wanted = [(row, cell) for row, cell in zip(rows, cells, strict=True) if row.get("status") == "ok"]
    releases = list(dict.fromkeys(cell.defense for _, cell in wanted))
    by_release: dict[DefenseJob, dict[str, float]] = {}
    with Progress(*Progress.get_default_columns(), console=console) as progress, PlainProgress(progress):
        bar = progress.add_task(f"utility tasks ({len(releases)} releases)", total=len(releases))
        for job in releases:
            by_release[job] = score_utility(ctx, tasks, job, job.model)
            progress.advance(bar)
    bases = {model: score_utility(ctx, tasks, None, model) for model in {cell.defense.model for _, cell in wanted}}
    for row, cell in wanted:
        row["utility_tasks_acc"] = json.dumps(by_release[cell.defense], sort_keys=True)
        row["base_utility_tasks_acc"] = json.dumps(bases[cell.defense.model], sort_keys=True)
