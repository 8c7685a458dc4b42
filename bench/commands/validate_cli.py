"""Printing side of `lockbench validate`: builds what is missing, checks, renders tables.

With the Ray executor the zoo check's parts (bench.commands.validate.zoo_parts) run as Ray tasks on the same
cluster as the grid's attacks against `none`, which are queued behind them: both cores work from the
start, and every accuracy is the one the serial check computes (one torch thread, trimmed lm-eval).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.commands.validate import (
    ArchitectureReport,
    AttackCheck,
    ZooPart,
    assemble_reports,
    attack_failures,
    attack_warnings,
    check_attacks,
    check_part,
    grid_judges_finetunes,
    grid_judges_merges,
    validate_zoo,
    zoo_parts,
)
from bench.harness.cluster import check_nodes_see_root, ray_session, start_ray
from bench.harness.context import get_context, trim_lm_eval_overheads
from bench.harness.utility_tasks import check_utility_tasks
from bench.plugins import ATTACKS
from bench.presets import Preset
from bench.runtime.storage import content_hash, storage_root, write_json_atomic
from bench.runtime.threads import compute_threads

#: Bump when the zoo-level checks change, so cached reports are not reused across the change.
REPORT_VERSION = 2


def report_path(root: Path, preset: Preset, zoo_hash: str) -> Path:
    """Where the zoo-level report of `preset` is cached: keyed by the zoo and the rule that judged it."""

    key = content_hash("validate", REPORT_VERSION, zoo_hash, preset.zoo, preset.validity, grid_judges_merges(preset),
                       grid_judges_finetunes(preset), preset.grid.expert_models if preset.grid else None)
    return root / "validate" / f"{preset.name}-{zoo_hash}-{key}.json"


def read_reports(path: Path) -> list[ArchitectureReport] | None:
    """The cached reports at `path`, or None when there are none (or they do not parse): the checks are
    deterministic (bench.runtime.threads), so re-scoring an unchanged zoo would only cost minutes."""

    try:
        rows = json.loads(path.read_text())
        return [ArchitectureReport.from_json(row) for row in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_report(reports: list[ArchitectureReport], path: Path) -> None:

    write_json_atomic(path, [report.to_json() for report in reports])

def write_attack_report(checks: list[AttackCheck], path: Path) -> None:

    write_json_atomic(path, [check.to_json() for check in checks])


def run_part(preset_json: str, root: str, part: ZooPart) -> ArchitectureReport | float:
    """One part of the zoo check on a Ray worker: the run's context, one torch thread, trimmed lm-eval."""

    trim_lm_eval_overheads()
    ctx = get_context(Preset.model_validate_json(preset_json), Path(root))
    with compute_threads():
        return check_part(ctx.zoo, ctx.preset, ctx.tasks, part)


def submit_zoo_parts(preset: Preset, root: Path, names: list[str]) -> dict[ZooPart, Any]:
    """Queue every part of the zoo check on the Ray cluster (started if need be); Ray object references."""
    # local: Ray is loaded only by runs on the Ray executor (serial runs and tests stay light)
    import ray

    start_ray()
    check_nodes_see_root(root)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_part)
    preset_json = ray.put(preset.model_dump_json())
    return {part: remote.remote(preset_json, str(root), part) for part in zoo_parts(preset, names)}


def gather_zoo_parts(preset: Preset, pending: dict[ZooPart, Any]) -> list[ArchitectureReport]:
    # local: Ray is loaded only by runs on the Ray executor (serial runs and tests stay light)
    import ray

    return assemble_reports(preset, dict(zip(pending, ray.get(list(pending.values())), strict=True)))


def _render(console: Console, report: ArchitectureReport) -> None:
    table = Table(title=f"{report.model}: standalone accuracy (test split)")
    table.add_column("task")
    table.add_column("base", justify="right")
    table.add_column("full expert", justify="right")
    table.add_column("LoRA expert", justify="right")
    for task, base in report.base.items():
        table.add_row(task, f"{base:.3f}", *(f"{report.experts[form].get(task, float('nan')):.3f}"
                                             if task in report.experts[form] else "-" for form in ("full", "lora")))
    console.print(table)
    merges = Table(title=f"{report.model}: task-arithmetic merges of expert pairs (mergekit)")
    for column in ("form", "pair", "coef", "chosen on", "acc", "kept of gain", "ok"):
        merges.add_column(column)
    for check in report.merges:
        first, second = check.members
        merges.add_row(check.form, f"{first}+{second}", f"{check.coefficient:g}", check.chosen_on,
                       f"{check.accuracy[first]:.3f} / {check.accuracy[second]:.3f}",
                       f"{check.kept_fraction[first]:.2f} / {check.kept_fraction[second]:.2f}",
                       "yes" if check.passes else "NO")
    console.print(merges)
    summary = Table(title=f"{report.model}: default merge attacks against none (kept fraction of the gain on T_p)")
    summary.add_column("attack")
    summary.add_column("mean kept", justify="right")
    for label, value in report.merge_attacks.items():
        summary.add_row(label, f"{value:.2f}")
    console.print(summary)
    if report.finetunes:
        tunes = Table(title=f"{report.model}: fine-tuning the base on downstream tasks (attacker split)")
        for column in ("attack", "task", "before", "after", "gain", "ok"):
            tunes.add_column(column)
        for check in report.finetunes:
            tunes.add_row(check.attack, check.task, f"{check.before:.3f}", f"{check.after:.3f}",
                          f"{check.gain:+.3f}", "yes" if check.passes else "NO")
        console.print(tunes)


def _short_config(attack: str, config: str) -> str:
    """The config's non-default values (`-` for the attack's defaults), so the table fits a terminal."""

    values = json.loads(config)
    try:
        defaults = ATTACKS.get(attack).Config().model_dump(mode="json", by_alias=True)
    except Exception:  # a labelled attack or one without defaults: show everything
        defaults = {}
    changed = {key: value for key, value in values.items() if defaults.get(key, object()) != value}
    return " ".join(f"{key}={json.dumps(value)}" for key, value in changed.items()) or "-"


def _render_attacks(console: Console, checks: list[AttackCheck]) -> None:
    table = Table(title="attacks of the grid against none — score: mean joint kept fraction of both experts' "
                        "gains (merge; per number of merged models in brackets) or mean gain (finetune); weak: "
                        "inputs (task, members) weak over all seeds")
    for column in ("model", "attack", "family", "config", "cells", "weak", "score", "s/cell", "status"):
        table.add_column(column, overflow="fold")
    for check in checks:
        colour = {"pass": "green", "n/a": "dim", "weak": "red", "failed": "red"}[check.status]
        cells = f"{check.cells}" + (f" ({check.not_applicable} n/a)" if check.not_applicable else "")
        split = " ".join(f"[{n}: {value:.2f}]" for n, value in sorted(check.by_members.items())
                         ) if len(check.by_members) > 1 else ""
        table.add_row(f"{check.model}/{check.release_format}", check.attack, check.family,
                      _short_config(check.attack, check.config), cells, f"{check.weak_groups} / {check.groups}",
                      f"{check.score:.2f} / {check.threshold:g} {split}".strip(), f"{check.seconds_per_cell:.1f}",
                      f"[{colour}]{check.status}[/]")
    console.print(table)


def run_validate(preset: Preset, root: Path | None, executor: str = "serial") -> int:
    """`lockbench validate`: 0 when the validity rule holds, 1 when it fails. On Ray, inside a
    `bench.harness.cluster.ray_session` (as `lockbench run --validate` calls it) the cluster stays up for
    the caller's run; otherwise this call's own session starts and stops it."""

    console = Console()
    base_root = storage_root(root)
    started = time.perf_counter()
    check_utility_tasks(preset, base_root)  # before any training
    ctx = get_context(preset, base_root)  # builds what is missing and materialises the tasks
    zoo = ctx.zoo
    console.print(f"zoo {zoo.hash} ready in {time.perf_counter() - started:.1f}s under {base_root / 'zoo'}")
    cached = report_path(base_root, preset, zoo.hash)
    reports = read_reports(cached)
    fresh = reports is None or sorted(r.model for r in reports) != sorted(zoo.model_names)
    attacks = None
    with ray_session() if executor == "ray" else nullcontext():
        pending = submit_zoo_parts(preset, base_root, list(zoo.model_names)) if fresh and executor == "ray" else None
        if fresh and pending is None:
            reports = validate_zoo(zoo, preset, ctx.tasks)
        if preset.grid is not None:
            console.print("running every attack of the grid against none (cells are cached for `lockbench run`)"
                          + ("; the zoo check runs beside them" if pending else ""))
            out_dir = base_root / "validate" / f"{preset.name}-{zoo.hash}-attacks"
            attacks = check_attacks(preset, base_root, out_dir, executor=executor)
        if pending is not None:
            reports = gather_zoo_parts(preset, pending)
    assert reports is not None
    if fresh:
        write_report(reports, cached)
    else:
        console.print(f"zoo checks read from {cached} (same zoo, same rule)")
    for report in reports:
        _render(console, report)
    failures = [failure for report in reports for failure in report.failures]
    for note in (note for report in reports for note in report.notes):
        console.print(f"[yellow]note:[/] {note}")
    if preset.grid is not None and preset.validity.weak_attacks == "warn":
        # The per-configuration verdict of every grid attack re-checks these (expert gain, base accuracy on
        # D, the attack's gain: bench.results.normalise), marks those cells weak and publishes what has no
        # valid attack left as invalid with the reason (DESIGN §6); `warn` says so instead of stopping.
        for failure in failures:
            console.print(f"[bold yellow]ZOO BREAKS THE RULE HERE (its cells are weak):[/] {failure}")
        failures = []
    if attacks is not None:
        checks, problems, gaps = attacks
        _render_attacks(console, checks)
        write_attack_report(checks, base_root / "validate" / f"{preset.name}-{zoo.hash}-attacks.json")
        failures += attack_failures(checks, problems, preset.validity.weak_attacks)
        for warning in attack_warnings(checks):
            console.print(f"[yellow]note:[/] {warning}")
        for gap in gaps:  # DESIGN §6: no number is published for these; the leaderboard flags them
            console.print(f"[bold yellow]NO VALID ATTACK OF A FAMILY:[/] {gap}")
        if preset.validity.weak_attacks == "warn":
            for problem in problems:
                console.print(f"[bold yellow]TRACK PUBLISHED AS INVALID:[/] {problem}")
    console.print(f"validation took {time.perf_counter() - started:.1f}s")
    if failures:
        console.print(f"[bold red]VALIDITY RULE FAILED ({len(failures)}):[/]")
        for failure in failures:
            console.print(f"  - {failure}")
        return 1
    console.print("[bold green]validity rule holds for every architecture[/]")
    return 0
