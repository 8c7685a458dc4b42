"""`lockbench run`: expand the grid, produce releases, attack them, score, write the run directory.

Crash safety: every stage result is an atomic, verified cache entry (bench.runtime.storage), so a re-run after a
kill resumes; the run directory's files are first written to a hidden staging folder and then moved in
one by one with README.md (the "complete run" marker, see bench.report.leaderboard) removed first and restored
last, so a killed run never leaves a half-written CSV or a README over mixed files.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
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

from bench.config import ConfigError
from bench.harness.context import clear_contexts, get_context
from bench.harness.executors import ExecutorName, WorkItem, import_plugin_modules, make_executor
from bench.harness.grid import Cell, DefenseJob, budget_references, copied_control, expand, shared_controls
from bench.harness.stages import cached_cell, cell_identity, private_dir, release_dir
from bench.harness.utility_tasks import add_utility_scores, check_utility_tasks
from bench.presets import Preset
from bench.results import SchemaError, ValidityRule, aggregate_all, conform_frame, score_cells, validity_failures
from bench.results.columns import BUDGETS, RAW_COLUMNS
from bench.runtime.numerics import numerics_stamp
from bench.runtime.progress_log import PlainProgress
from bench.runtime.storage import (
    deep_verification,
    entry_state,
    invalidate,
    remove_stale_temp_files,
    safetensors_problem,
)
from bench.runtime.versions import versions


@dataclass
class RunSummary:
    """What a run computed: the counts, and the scored cells themselves (`frame`, cells.csv's rows) with the
    rule they were scored under, so that a command uses the run's data without reading back a file.
    Writing the run directory is a separate step (`bench.report.leaderboard.write_run`)."""

    out_dir: Path
    cells: int
    failed: int
    cached: int
    seconds: float
    problems: list[str] = field(default_factory=list)
    first_error: str = ""
    frame: pd.DataFrame | None = None
    rule: ValidityRule | None = None
    title: str = ""

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.problems

    @cached_property
    def aggregates(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(board, picks, sensitivity) of the cells under `rule`, computed once (the bootstrap is the costly
        part): the run directory's files and a command's use of the board share them."""
        if self.frame is None:
            raise ValueError("this summary holds no cells")
        return aggregate_all(self.frame, self.rule or ValidityRule())

    @property
    def board(self) -> pd.DataFrame:
        """The leaderboard rows of the run (one per defense × track × model × format), aggregated under `rule`."""
        return self.aggregates[0]


def _progress(console: Console) -> Progress:
    """The bars on a terminal; `bench.runtime.progress_log` adds plain lines about once a minute when stdout is not one."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("cached {task.fields[cached]} · failed {task.fields[failed]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def _run_items(executor: Any, preset: Preset, root: Path, items: list[WorkItem], totals: dict[str, int],
               cached: dict[str, int], fractions: list[float], console: Console) -> dict[tuple[str, int], Any]:
    """Run the items (releases and cells together, each cell after its release), one progress bar per kind."""
    results: dict[tuple[str, int], Any] = {}
    failed: Counter[str] = Counter()
    with _progress(console) as progress, PlainProgress(progress):
        bars = {kind: progress.add_task(f"{label} ({totals[kind]})", total=totals[kind], completed=cached[kind],
                                        cached=cached[kind], failed=0)
                for kind, label in (("defend", "releases"), ("cell", "cells"))}
        for item, result in executor.map(preset, root, items, fractions):
            results[(item.kind, item.index)] = result
            if isinstance(result, dict) and result.get("status") == "failed":
                failed[item.kind] += 1
            progress.update(bars[item.kind], advance=1, cached=cached[item.kind], failed=failed[item.kind])
    return results


def run_benchmark(preset: Preset, root: Path, out_dir: Path, executor_name: ExecutorName = "serial",
                  console: Console | None = None, **executor_kwargs: Any) -> RunSummary:
    """The pipeline: check the inputs, expand the grid, build the zoo, run what the cache lacks (each
    release, then its cells as soon as it exists), score the records and return them. `out_dir` receives the
    run's log as it goes; its result files are `bench.report.leaderboard.write_run`'s to write."""

    console = console or Console(stderr=True)
    started = time.perf_counter()
    cells, utility = _checked_grid(preset, root)
    for folder in (root / "cells", root / "scores", out_dir):
        remove_stale_temp_files(folder)
    clear_contexts()  # this process may hold a context from before a file was damaged
    with deep_verification():  # the driver checks every cached zoo file's hash once; damaged ones are rebuilt
        ctx = get_context(preset, root)  # builds the zoo in the driver, before any worker needs it
    # Created only now: building the zoo reads the last inputs (document-task files), and input that fails
    # there must leave no empty run directory behind.
    out_dir.mkdir(parents=True, exist_ok=True)
    stand_in = shared_controls(cells)  # seed-free controls: computed at the first seed, copied to the others
    jobs: list[DefenseJob] = list(dict.fromkeys(cells[i].defense for i in range(len(cells)) if i not in stand_in))
    job_cached = {i for i, job in enumerate(jobs) if _release_ready(ctx, job)}
    cached_records = {i: record for i, cell in enumerate(cells)
                      if i not in stand_in and (record := cached_cell(ctx, cell)) is not None}
    job_of = {job: i for i, job in enumerate(jobs)}
    items = [WorkItem(i, "defend", job) for i, job in enumerate(jobs) if i not in job_cached]
    items += [WorkItem(i, "cell", cell, after=(job_of[cell.defense],) if job_of[cell.defense] not in job_cached else ())
              for i, cell in enumerate(cells) if i not in cached_records and i not in stand_in]
    # A fully cached re-run starts no executor (a Ray cluster alone takes seconds to start and stop).
    executor = make_executor(executor_name, **executor_kwargs) if items else _NoExecutor()
    try:
        executor.check_storage(root)
        results = _run_items(executor, preset, root, items, {"defend": len(jobs), "cell": len(cells) - len(stand_in)},
                             {"defend": len(job_cached), "cell": len(cached_records)},
                             list(preset.grid.budget_fractions), console)
    finally:
        executor.shutdown()

    def record_of(i: int) -> dict[str, Any]:
        return cached_records[i] if i in cached_records else results[("cell", i)]

    references = budget_references(preset.grid)
    records = [to_raw_row(copied_control(record_of(stand_in[i]), cell) if i in stand_in else record_of(i), cell,
                          ctx.zoo.hash) | {"budget_reference": references.get(cell.defense.defense_label, "")}
               for i, cell in enumerate(cells)]
    add_utility_scores(ctx, utility, records, cells, console)
    raw = _checked_frame(ctx, records, cells)
    rule = preset.validity.rule()
    scored = score_cells(raw, rule)
    failed_rows = raw[raw["status"] == "failed"]
    first_error = str(failed_rows["error"].iloc[0]) if len(failed_rows) else ""
    cached = len(cached_records) + sum(source in cached_records for source in stand_in.values())  # copies of cached
    return RunSummary(out_dir, len(cells), len(failed_rows), cached, time.perf_counter() - started,
                      validity_failures(scored, rule), first_error, frame=scored, rule=rule,
                      title=f"lockbench — preset {preset.name}")


def _checked_grid(preset: Preset, root: Path) -> tuple[list[Cell], Any]:
    """Every input error before any compute: the zoo's model folders, the utility tasks, the plugins named
    in $LOCKBENCH_PLUGINS and the grid (expanding needs only the zoo's model names, not the zoo)."""
    if preset.grid is None:
        raise ConfigError(f"preset '{preset.name}' has no 'grid' section; it can only be validated")
    check_zoo_inputs(preset)
    utility = check_utility_tasks(preset, root)
    import_plugin_modules()
    cells = expand(preset.grid, {model: preset.zoo.expert_tasks_of(model) for model in preset.zoo.models},
                   list(preset.zoo.downstream_tasks))
    if not cells:
        raise ConfigError(f"the grid of preset '{preset.name}' expands to no cells: give merge_attacks or "
                          "finetune_attacks for the tracks its defenses support")
    return cells, utility


class _NoExecutor:
    """Stands in for an executor when every item is cached: nothing to map, nothing to shut down."""

    def map(self, *args: Any) -> list[Any]:
        return []

    def check_storage(self, root: Path) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _release_ready(ctx: Any, job: DefenseJob) -> bool:
    """A complete, hash-verified release; a damaged one (or its private part) is removed to be rebuilt."""
    state = entry_state(release_dir(ctx, job), deep=True)
    if state == "complete" and entry_state(private_dir(ctx, job), deep=True) == "corrupt":
        state = "corrupt"  # the release and its private material are produced together
    if state == "corrupt":
        invalidate(release_dir(ctx, job))
        invalidate(private_dir(ctx, job))
    return state == "complete"


#: "owner/name": a Hugging Face hub id rather than a local folder.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_zoo_inputs(preset: Preset) -> None:
    """Refuse user-supplied model folders that cannot be loaded safely, before any compute is spent.

    Weights are read through safetensors only (a pickle file is never loaded), and a model that needs
    custom code is refused unless its zoo entry sets trust_remote_code.
    """
    chosen = preset.grid.models if preset.grid and preset.grid.models else list(preset.zoo.models)
    for name, entry in preset.zoo.models.items():
        if name not in chosen:
            continue  # the zoo builds only the grid's models (bench.harness.context)
        paths = ([("pretrained", entry.pretrained)] if entry.pretrained else []) + [
            (f"expert_paths.{task}", path) for task, path in entry.expert_paths.items()]
        for field_name, raw in paths:
            where = f"zoo model '{name}' {field_name}"
            folder = Path(raw).expanduser()
            if not folder.is_dir() and HUB_ID.match(raw):
                if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
                    raise ConfigError(f"{where}: '{raw}' is no local folder, and the hub is off "
                                      "(HF_HUB_OFFLINE is set): run with HF_HUB_OFFLINE=0 on a machine with hub access")
                continue  # a hub id: transformers fetches it, safetensors only, no custom code unless trusted
            if not folder.is_dir():
                raise ConfigError(f"{where}: {folder} is not a directory with a Hugging Face model")
            config_file = folder / "config.json"
            if not config_file.is_file():
                raise ConfigError(f"{where}: {folder} has no config.json")
            try:
                config = json.loads(config_file.read_text())
            except ValueError as error:
                raise ConfigError(f"{where}: {config_file} is not valid JSON ({error})") from error
            weights = sorted(folder.glob("*.safetensors"))
            if not weights:
                pickles = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt"})
                detail = f" (only {', '.join(pickles)}: pickle files, which lockbench never loads)" if pickles else ""
                raise ConfigError(f"{where}: {folder} holds no .safetensors weights{detail}")
            for weight in weights:
                problem = safetensors_problem(weight)
                if problem:
                    raise ConfigError(f"{where}: damaged weights: {problem}")
            if isinstance(config, dict) and config.get("auto_map") and not entry.trust_remote_code:
                raise ConfigError(f"{where}: {folder} needs custom model code (auto_map in config.json); set "
                                  "trust_remote_code: true in its zoo entry only if you trust that code")


def _checked_frame(ctx: Any, rows: list[dict[str, Any]], cells: list[Cell]) -> pd.DataFrame:
    """The raw frame, with a row turned into a failed cell when what its plugins reported breaks the
    schema (e.g. an unknown fine-tuning method): one bad plugin fails its cells, not the whole run at
    the end. Rows are checked one by one only when the whole frame does not conform (a check costs ~0.1 s)."""

    frame = pd.DataFrame.from_records(rows)
    try:
        conform_frame(frame, "raw")
        return frame
    except SchemaError:
        pass
    for index, (row, cell) in enumerate(zip(rows, cells, strict=True)):
        try:
            conform_frame(pd.DataFrame.from_records([row]), "raw")
        except SchemaError as error:
            failed = {**cell_identity(ctx, cell), "status": "failed", "error": f"SchemaError: {error}"[:500]}
            rows[index] = to_raw_row(failed, cell, ctx.zoo.hash)
    return pd.DataFrame.from_records(rows)


def to_raw_row(record: dict[str, Any], cell: Cell, zoo_hash: str) -> dict[str, Any]:
    """Map a stage record onto the raw-cell schema of bench.results (every column present)."""

    row: dict[str, Any] = {column: None for column in RAW_COLUMNS}
    row.update({key: value for key, value in record.items() if key in row})
    track = record.get("track", cell.defense.track)
    knobs = {key.removeprefix("knob_"): value for key, value in record.items() if key.startswith("knob_")}
    row["attack_knobs"] = json.dumps(knobs, sort_keys=True) if knobs else None
    stage_acc = record.get("stage_acc") or ({"pre_heal": record["pre_heal_acc"]} if "pre_heal_acc" in record else {})
    row["stage_acc"] = json.dumps(stage_acc, sort_keys=True) if stage_acc else None
    row["pre_heal_acc"] = stage_acc.get("pre_heal")
    if track == "merge":
        # sorted keys: a fresh record and its cached JSON (written sorted) give the same text
        weights = json.dumps(record.get("knob_weights"), sort_keys=True)
        row.update(merge_method=record.get("knob_method"), merge_weights=weights,
                   merge_normalize=record.get("knob_normalize"), merge_lambda=record.get("knob_lambda"),
                   merge_density=record.get("knob_density"), merge_rescale=record.get("knob_rescale"))
    else:
        row.update(ft_method=record.get("knob_method"), ft_lr=record.get("knob_lr"), ft_steps=record.get("knob_steps"))
        for tag, fraction in BUDGETS.items():  # records cached before the stages wrote the CSV's names
            if row.get(f"gain_{tag}") is None:
                row[f"gain_{tag}"] = record.get(f"gain_at_{fraction:g}")
            if tag != "b1" and row.get(f"acc_{tag}") is None:
                row[f"acc_{tag}"] = record.get(f"acc_at_{fraction:g}")
    budget_keys = {f"{kind}_at_{fraction:g}" for kind in ("gain", "acc") for fraction in BUDGETS.values()}
    dropped = sorted(key for key in record if key not in row and key not in budget_keys
                     and not key.startswith("knob_") and key != "traceback")
    if dropped:  # nothing a stage records is lost without a word (a new metric belongs in bench.results)
        warnings.warn(f"cell record keys with no cells.csv column, not published: {dropped}", stacklevel=2)
    row.update(versions())
    row["zoo_hash"] = zoo_hash
    row["cpu_capability"] = numerics_stamp()  # the workers' too: they inherit the pin (tests/system/test_worker_env.py)
    return row
