"""Printing side of `lockbench validate`: builds what is missing, checks, renders tables."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness.context import get_context
from bench.harness.utility_tasks import check_utility_tasks
from bench.presets import Preset
from bench.storage import storage_root
from bench.validate import (
    ArchitectureReport,
    AttackCheck,
    attack_failures,
    attack_warnings,
    check_attacks,
    read_reports,
    report_path,
    validate_zoo,
    write_attack_report,
    write_report,
)


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
    import json

    from bench.plugins import ATTACKS

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
    console = Console()
    base_root = storage_root(root)
    started = time.perf_counter()
    check_utility_tasks(preset, base_root)  # before any training
    ctx = get_context(preset, base_root)  # builds what is missing and materialises the tasks
    zoo = ctx.zoo
    console.print(f"zoo {zoo.hash} ready in {time.perf_counter() - started:.1f}s under {base_root / 'zoo'}")
    cached = report_path(base_root, preset, zoo.hash)
    reports = read_reports(cached)
    if reports is None or sorted(r.model for r in reports) != sorted(zoo.model_names):
        reports = validate_zoo(zoo, preset, ctx.tasks)
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
    if preset.grid is not None:
        console.print("running every attack of the grid against none (cells are cached for `lockbench run`)")
        out_dir = base_root / "validate" / f"{preset.name}-{zoo.hash}-attacks"
        checks, problems, gaps = check_attacks(preset, base_root, out_dir, executor=executor)
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
