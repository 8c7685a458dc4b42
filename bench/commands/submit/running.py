"""Running a submission: its dry run on the micro zoo, the preset run, its ranks and its leaderboard entry."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.commands.submit.loading import (
    DRY_RUN_PRESET,
    SUBMISSION_FILE,
    WORKER_ENV,
    Submission,
    SubmissionError,
    prepare,
    register,
)
from bench.commands.submit.place import place
from bench.harness.cluster import start_ray
from bench.harness.context import get_context
from bench.harness.grid import DefenseJob
from bench.harness.stages import DefenseOutputError, check_release, owner_view
from bench.plugins import DEFENSES, FORMATS, TRACKS, Release
from bench.plugins.checks import NAME_PATTERN, one_line
from bench.presets import Preset, PresetError, load_preset
from bench.presets.grid import PluginSpec
from bench.report.html import write_html_index
from bench.report.leaderboard import CELLS_FILE, LEADERBOARD_FILE, PLOT_FILE, README_FILE, publish_directory, run_and_write
from bench.report.readme import markdown_table
from bench.results import SchemaError, read_csv
from bench.runtime.runlog import library_output
from bench.runtime.storage import storage_root
from bench.runtime.versions import versions

# ----------------------------------------------------------------------------- dry run


def dry_run(submission: Submission, root: Path) -> list[str]:
    """Call `protect` once per declared track and format on the micro zoo and check each release as the
    harness will. Returns one note per call; raises SubmissionError on the first bad release."""
    # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
    import torch

    ctx = get_context(load_preset(DRY_RUN_PRESET), root)
    cls, notes = submission.cls, []
    families = {model: ctx.zoo.family(model) for model in ctx.zoo.model_names}
    for track in TRACKS:
        if track not in cls.tracks:
            continue
        for release_format in (FORMATS if track == "merge" else ("full",)):
            if release_format not in cls.formats:
                continue
            defense = cls(submission.config)
            model = next((m for m, family in families.items() if defense.supports(track, release_format, family)),
                         None)
            where = f"{track} track, format {release_format}"
            if model is None:
                notes.append(f"{where}: skipped, the micro zoo has no {'/'.join(sorted(cls.families or []))} model")
                continue
            task = ctx.preset.zoo.expert_tasks[0] if track == "merge" else None
            job = DefenseJob(cls.name, cls.name, submission.config_json, track, release_format, model, task, 0)
            torch.manual_seed(0)
            started = time.perf_counter()
            try:
                release = defense.protect(owner_view(ctx, job))
            except Exception as error:
                raise SubmissionError(f"dry run ({where}, micro zoo model {model}): protect raised "
                                      f"{one_line(error)}") from error
            try:
                check_release(release, job)
            except DefenseOutputError as error:
                raise SubmissionError(f"dry run ({where}, micro zoo model {model}): {error}") from error
            _check_release_extras(release, f"dry run ({where}, micro zoo model {model})")
            notes.append(f"{where}: protect returned a valid Release on micro/{model} "
                         f"in {time.perf_counter() - started:.1f}s")
    return notes


def _check_release_extras(release: Release, prefix: str) -> None:
    """What the harness stores besides the model must be storable: private tensors and JSON notes."""
    # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
    import torch

    if not isinstance(release.private, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in release.private.items()):
        raise SubmissionError(f"{prefix}: Release.private must map names to torch tensors")
    try:
        json.dumps(release.notes)
    except (TypeError, ValueError) as error:
        raise SubmissionError(f"{prefix}: Release.notes must be JSON-serialisable ({one_line(error)})") from error


# ----------------------------------------------------------------------------- running


def with_submission(preset: Preset, submission: Submission) -> Preset:
    """The preset's grid with the submission appended to its reference defenses."""

    if preset.grid is None:
        raise SubmissionError(f"preset '{preset.name}' has no grid section to run")
    taken = {spec.display for spec in preset.grid.defenses}
    if submission.name in taken:
        raise SubmissionError(f"defense name '{submission.name}' is already used by preset '{preset.name}' "
                              f"({', '.join(sorted(taken))}): rename the submission's `name`")
    DEFENSES.names()  # loads installed entry points, whose names are taken too
    existing = DEFENSES.registered(submission.name)
    if existing is not None and existing is not submission.cls:
        raise SubmissionError(f"defense name '{submission.name}' is taken by {existing.__module__}."
                              f"{existing.__qualname__}: rename the submission's `name`")
    spec = PluginSpec(name=submission.registered_name, label=submission.name, config=json.loads(submission.config_json))
    grid = preset.grid.model_copy(update={"defenses": [*preset.grid.defenses, spec]})
    return preset.model_copy(update={"grid": grid})


def init_ray_for(submission: Submission, salt: str, worker_env: str = WORKER_ENV,
                 setup_hook: str = "bench.commands.submit.worker_setup") -> None:
    """Start Ray with a hook that registers the submission in every worker (workers import only lockbench).
    Joining a remote cluster through RAY_ADDRESS needs the submission at the same path on every node."""

    extra = [str(Path(submission.spec.partition(":")[0]).parent)] if submission.kind == "file" else []
    payload = json.dumps({"spec": submission.spec, "config": json.loads(submission.config_json), "salt": salt})
    start_ray(env_vars={worker_env: payload}, pythonpath=[*extra, os.getcwd()], setup_hook=setup_hook)


# ----------------------------------------------------------------------------- ranking and README


def published_boards(leaderboard_dir: Path) -> list[tuple[str, pd.DataFrame]]:
    """Readable leaderboard.csv of each published run (submissions/ excluded)."""

    boards = []
    if leaderboard_dir.is_dir():
        for folder in sorted(leaderboard_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and (folder / LEADERBOARD_FILE).is_file():
                try:
                    boards.append((folder.name, read_csv(folder / LEADERBOARD_FILE, "leaderboard")))
                except SchemaError:
                    continue
    return boards


def rank_rows(board: pd.DataFrame, name: str, published: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """The submission's rank by protection in each (track, model, format) it was scored on.

    The pool is this run's defenses plus the published runs' defenses measured on the same zoo (same
    zoo hash), each defense once: this run's numbers win over published ones. Unscored rows rank last.
    """
    columns = ["track", "model", "release_format", "protection", "attack_success",
               "utility_retention", "rank", "ranked", "pool", "best_other", "best_other_protection"]
    rows = []
    mine = board[(board["defense"] == name) & (board["status"] == "ok")]
    for _, row in mine.iterrows():
        key = (row["track"], row["model"], row["release_format"])
        pool: dict[str, tuple[float, str]] = {}
        for source, frame in [("this run", board), *published]:
            same = frame[(frame["track"] == key[0]) & (frame["model"] == key[1]) & (frame["release_format"] == key[2])
                         & (frame["status"] == "ok") & (frame["zoo_hash"] == row["zoo_hash"])]
            for _, other in same.iterrows():
                pool.setdefault(other["defense"], (float(other["protection"]), source))
        scored = {defense: value for defense, (value, _) in pool.items() if not math.isnan(value)}
        value = float(row["protection"])
        rank = 1 + sum(other > value for other in scored.values()) if not math.isnan(value) else None
        others = {d: v for d, v in scored.items() if d != name}
        best = max(others, key=lambda d: others[d]) if others else ""
        rows.append([*key, value, float(row["attack_success"]), float(row["utility_retention"]), rank,
                     len(scored), ", ".join(f"{d} ({src})" for d, (_, src) in sorted(pool.items())),
                     best, others.get(best, math.nan)])
    return pd.DataFrame(rows, columns=columns)


def fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def class_name(submission: Submission) -> str:
    """`module.Class`; a file's module name is synthetic, so name the file instead."""
    if submission.kind == "file":  # its file name only: a published file never names a local path
        return f"{submission.cls.__qualname__} in {Path(submission.spec.partition(':')[0]).name}"
    return f"{submission.cls.__module__}.{submission.cls.__qualname__}"


def render_submission_readme(submission: Submission, preset: Preset, ranks: pd.DataFrame, run_readme: str,
                             problems: list[str], failed: pd.DataFrame) -> str:

    lines = [f"# Submission: {submission.name}", "",
             f"- source: {submission.published_source}",
             f"- class: `{class_name(submission)}` — {submission.cls.description}",
             f"- tracks: {', '.join(sorted(submission.cls.tracks))}; formats: {', '.join(sorted(submission.cls.formats))}",
             f"- config: `{submission.config_json}`",
             f"- code hash: `{submission.code_hash}` (cache key of its releases and cells)",
             f"- preset: `{preset.name}` — {preset.description}", ""]
    if problems:
        lines += ["**NOT VALID — not ranked.** The run broke DESIGN §6's validity rule, so its numbers are",
                  "noise and must not be compared:", "", *(f"- {p}" for p in problems), ""]
    if not failed.empty:
        lines += [f"**{len(failed)} of the submission's cells failed**; first error: `{failed['error'].iloc[0]}`", ""]
    lines += ["## Rank", "",
              "Rank by protection (`protection`, higher is better) among the defenses of this",
              "run and the published defenses measured on the same zoo; unscored defenses are not ranked.", ""]
    if ranks.empty:
        lines.append("The submission has no scored row.")
    else:
        header = ["track", "model", "format", "protection", "attack success",
                  "utility retention", "rank", "best other defense", "pool"]
        rows = [[r["track"], r["model"], r["release_format"], fmt(r["protection"]),
                 fmt(r["attack_success"]), fmt(r["utility_retention"]),
                 "not ranked" if problems or pd.isna(r["rank"]) else f"{int(r['rank'])} of {r['ranked']}",
                 f"{r['best_other']} ({fmt(r['best_other_protection'])})" if r["best_other"] else "–", r["pool"]]
                for _, r in ranks.iterrows()]
        lines += markdown_table(header, rows)
    body = run_readme.split("\n", 1)[1] if "\n" in run_readme else ""
    return "\n".join([*lines, "", "## Results of the run", "", body.lstrip("\n")])


def write_submission(target: Path, run_dir: Path, readme: str, metadata: dict[str, Any]) -> Path:
    """Copy the run's CSVs and plot into `target` with the submission README, atomically."""

    def fill(scratch: Path) -> None:
        for name in (CELLS_FILE, LEADERBOARD_FILE, PLOT_FILE):
            shutil.copy2(run_dir / name, scratch / name)
        (scratch / SUBMISSION_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        (scratch / README_FILE).write_text(readme)

    return publish_directory(target, fill)


@dataclass
class SubmitResult:
    """What `lockbench submit` reports."""

    submission: Submission
    run_dir: Path
    target: Path | None
    cells: int
    failed: int
    problems: list[str]
    ranks: pd.DataFrame

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.problems and self.target is not None


def run_submission(submission: Submission, preset: Preset, root: Path, run_dir: Path, leaderboard_dir: Path,
                   folder_name: str, executor: str = "serial", allow_invalid: bool = False,
                   salt: str = "") -> SubmitResult:
    """Run the preset with the submission beside its references and file `leaderboard/submissions/NAME/`.

    A run that breaks the validity rule is filed only with `allow_invalid` (its README then says so
    loudly and ranks nothing): an invalid zoo's numbers are noise (DESIGN §6).
    """

    full = with_submission(preset, submission)
    register(submission)
    if executor == "ray":
        init_ray_for(submission, salt)
    summary = run_and_write(full, root, run_dir, executor)  # type: ignore[arg-type]
    cells, board = summary.frame, summary.board
    mine = cells[cells["defense"] == submission.name]
    if mine.empty:
        raise SubmissionError(f"preset '{preset.name}' has no cell for {submission.name}: it declares tracks "
                              f"{sorted(submission.cls.tracks)}, formats {sorted(submission.cls.formats)}, "
                              f"families {sorted(submission.cls.families or ['any'])}")
    failed = mine[mine["status"] == "failed"]
    ranks = rank_rows(board, submission.name, published_boards(leaderboard_dir))
    target = None
    if not summary.problems or allow_invalid:
        readme = render_submission_readme(submission, preset, ranks, (run_dir / README_FILE).read_text(),
                                          summary.problems, failed)
        metadata = {"name": submission.name, "source": submission.published_source, "kind": submission.kind,
                    "class": class_name(submission),
                    "config": json.loads(submission.config_json), "code_hash": submission.code_hash,
                    "preset": preset.name, "valid": not summary.problems, "validity_problems": summary.problems,
                    "cells": len(mine), "failed_cells": len(failed), "versions": versions(),
                    "rank": json.loads(ranks.to_json(orient="records"))}
        target = write_submission(leaderboard_dir / "submissions" / folder_name, run_dir, readme, metadata)
        write_html_index(leaderboard_dir)
    return SubmitResult(submission, run_dir, target, summary.cells, len(failed), summary.problems, ranks)


# ----------------------------------------------------------------------------- command line


def _print_ranks(console: Any, ranks: pd.DataFrame, valid: bool) -> None:
    # local: a heavy library that only this code path uses
    from rich.table import Table

    table = Table(title="rank by protection (higher is better)")
    for column in ("track", "model", "format", "protection", "attack success", "utility retention", "rank"):
        table.add_column(column)
    for _, r in ranks.iterrows():
        rank = "not ranked" if not valid or pd.isna(r["rank"]) else f"{int(r['rank'])} of {r['ranked']}"
        table.add_row(r["track"], r["model"], r["release_format"], fmt(r["protection"]),
                      fmt(r["attack_success"]), fmt(r["utility_retention"]), rank)
    console.print(table)


def submit_command(defense: str, name: str | None, preset_name: str, config_json: str | None, executor: str,
                   root: Path | None, out: Path | None, leaderboard_dir: Path | None, dry: bool, check_only: bool,
                   allow_invalid: bool, fresh: bool) -> int:
    """`lockbench submit` (docs/SUBMITTING.md's table): 0 checked, or filed (with --allow-invalid also when
    marked NOT VALID); 1 the run finished but is not filed (validity rule) or lost cells; 2 the submission or
    its options are wrong (each problem printed as one `error:` line, before anything is written)."""
    # local: a heavy library that only this code path uses
    from rich.console import Console

    console, errors = Console(), Console(stderr=True)

    def fail(problems: list[str], code: int = 2) -> int:
        for problem in problems:
            errors.print(f"[red]error:[/red] {problem}", markup=True, highlight=False, soft_wrap=True)
        return code

    if executor not in ("serial", "ray"):
        return fail([f"unknown executor '{executor}'; choose serial or ray"])
    try:
        config = json.loads(config_json) if config_json else {}
    except json.JSONDecodeError as error:
        return fail([f"--config is not JSON: {error}"])
    if not isinstance(config, dict):
        return fail([f"--config must be a JSON object, got {config_json}"])
    try:
        preset = load_preset(preset_name)
    except PresetError as error:
        return fail([str(error)])
    salt = str(time.time_ns()) if fresh else ""
    try:
        submission = prepare(defense, config, salt)
        folder = name or submission.name
        if not NAME_PATTERN.match(folder):
            return fail([f"--name {folder!r} must be 1-64 letters, digits, '_', '.' or '-'"])
        with_submission(preset, submission)  # name clashes, before any compute
        console.print(f"[green]ok[/green] {submission.cls.__qualname__} '{submission.name}' from {submission.source}: "
                      f"tracks {', '.join(sorted(submission.cls.tracks))}, config {submission.config_json}",
                      highlight=False, soft_wrap=True)
        base = storage_root(root)
        if dry:
            for note in dry_run(submission, base):
                console.print(f"[green]ok[/green] dry run, {note}", highlight=False, soft_wrap=True)
    except SubmissionError as error:
        return fail(error.problems)
    if check_only:
        return 0

    placement = place(leaderboard_dir, out, folder)
    run_dir, board_dir = placement.run_dir, placement.leaderboard_dir

    try:
        with library_output(run_dir):  # library warnings: run_dir/lockbench.log
            result = run_submission(submission, preset, base, run_dir, board_dir, folder, executor, allow_invalid,
                                    salt)
    except SubmissionError as error:
        return fail(error.problems)
    console.print(f"{result.cells} cells in {run_dir} ({result.failed} of the submission's failed)")
    _print_ranks(console, result.ranks, not result.problems)
    for problem in result.problems:
        errors.print(f"[red]VALIDITY:[/red] {problem}", highlight=False, soft_wrap=True)
    if result.target is None:
        return fail([f"the run broke the validity rule, so nothing was filed under {board_dir / 'submissions'} "
                     "(numbers of an invalid zoo are noise); --allow-invalid files it marked NOT VALID"], 1)
    console.print(f"filed {result.target}" + (" (marked NOT VALID)" if result.problems else ""), soft_wrap=True)
    note = placement.filed_note(result.target)
    if note:
        console.print(note, highlight=False, soft_wrap=True)
    if result.failed:
        return fail([f"{result.failed} of the submission's cells failed; see {result.target / 'cells.csv'}"], 1)
    return 0
