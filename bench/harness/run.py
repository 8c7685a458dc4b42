"""`lockbench run`: expand the grid, produce releases, attack them, score, write the run directory."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from bench.harness.context import get_context
from bench.harness.executors import ExecutorName, WorkItem, make_executor
from bench.harness.grid import Cell, DefenseJob, expand
from bench.harness.stages import cell_identity, cell_path, release_dir
from bench.presets import Preset
from bench.storage import is_complete


@dataclass
class RunSummary:
    out_dir: Path
    cells: int
    failed: int
    cached: int
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.problems


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("cached {task.fields[cached]} · failed {task.fields[failed]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def _run_items(executor, preset: Preset, root: Path, items: list[WorkItem], cached: set[int], label: str,
               fractions: list[float], console: Console) -> dict[int, Any]:
    results: dict[int, Any] = {}
    counts: Counter[str] = Counter(cached=len(cached))
    with _progress(console) as progress:
        bar = progress.add_task(label, total=len(items), cached=counts["cached"], failed=0)
        for item, result in executor.map(preset, root, items, fractions):
            results[item.index] = result
            if isinstance(result, dict) and result.get("status") == "failed":
                counts["failed"] += 1
            progress.update(bar, advance=1, cached=counts["cached"], failed=counts["failed"])
    return results


def run_benchmark(preset: Preset, root: Path, out_dir: Path, executor_name: ExecutorName = "serial",
                  console: Console | None = None, **executor_kwargs: Any) -> RunSummary:
    from bench.leaderboard import write_run_outputs
    from bench.scoring import aggregate, score_cells, validity_failures

    console = console or Console(stderr=True)
    if preset.grid is None:
        raise ValueError(f"preset '{preset.name}' has no 'grid' section; it can only be validated")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = get_context(preset, root)  # builds the zoo in the driver, before any worker needs it
    families = {name: ctx.zoo.family(name) for name in ctx.zoo.model_names}
    cells = expand(preset.grid, families, list(preset.zoo.expert_tasks), list(preset.zoo.downstream_tasks))
    jobs: list[DefenseJob] = list(dict.fromkeys(cell.defense for cell in cells))
    fractions = list(preset.grid.budget_fractions)
    executor = make_executor(executor_name, **executor_kwargs)
    try:
        job_items = [WorkItem(i, "defend", job) for i, job in enumerate(jobs)]
        job_cached = {i for i, job in enumerate(jobs) if is_complete(release_dir(ctx, job))}
        job_results = _run_items(executor, preset, root, [it for it in job_items if it.index not in job_cached],
                                 job_cached, f"releases ({len(jobs)})", fractions, console)
        # A release that failed fails all its cells at once: re-running a failing defense per cell would
        # repeat minutes of training only to fail again.
        job_errors = {jobs[i]: result["error"] for i, result in job_results.items() if result.get("status") == "failed"}
        cell_items = [WorkItem(i, "cell", cell) for i, cell in enumerate(cells)]
        cell_cached = {i for i, cell in enumerate(cells) if cell_path(ctx, cell).is_file()}
        doomed = {i for i, cell in enumerate(cells) if cell.defense in job_errors and i not in cell_cached}
        fresh = _run_items(executor, preset, root,
                           [it for it in cell_items if it.index not in cell_cached | doomed],
                           cell_cached, f"cells ({len(cells)})", fractions, console)
        for index in doomed:
            fresh[index] = {**cell_identity(ctx, cells[index]), "status": "failed",
                            "error": job_errors[cells[index].defense]}
    finally:
        executor.shutdown()
    records = []
    for index, cell in enumerate(cells):
        record = json.loads(cell_path(ctx, cell).read_text()) if index in cell_cached else fresh[index]
        records.append(to_raw_row(record, cell, ctx.zoo.hash))
    raw = pd.DataFrame.from_records(records)
    scored = score_cells(raw, preset.validity.rule())
    board = aggregate(scored)
    write_run_outputs(out_dir, scored, board, title=f"lockbench — preset {preset.name}")
    failed = int((raw["status"] == "failed").sum())
    problems = validity_failures(scored)
    return RunSummary(out_dir, len(cells), failed, len(cell_cached), time.perf_counter() - started, problems)


GAIN_COLUMNS = {0.125: "gain_b0125", 0.25: "gain_b025", 0.5: "gain_b05", 1.0: "gain_b1"}


def to_raw_row(record: dict[str, Any], cell: Cell, zoo_hash: str) -> dict[str, Any]:
    """Map a stage record onto the raw-cell schema of bench.scoring (every column present)."""
    from bench.scoring import RAW_COLUMNS
    from bench.versions import versions

    row: dict[str, Any] = {column: None for column in RAW_COLUMNS}
    row.update({key: value for key, value in record.items() if key in row})
    track = record.get("track", cell.defense.track)
    if track == "merge":
        row.update(merge_method=record.get("knob_method"), merge_weights=json.dumps(record.get("knob_weights")),
                   merge_normalize=record.get("knob_normalize"), merge_lambda=record.get("knob_lambda"),
                   merge_density=record.get("knob_density"), merge_rescale=record.get("knob_rescale"))
    else:
        row.update(ft_method=record.get("knob_method"), ft_lr=record.get("knob_lr"), ft_steps=record.get("knob_steps"))
        for fraction, column in GAIN_COLUMNS.items():
            row[column] = record.get(f"gain_at_{fraction:g}")
    row.update(versions())
    row["zoo_hash"] = zoo_hash
    return row
