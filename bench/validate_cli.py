"""Printing side of `lockbench validate`: builds what is missing, checks, renders tables."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.harness.context import get_context
from bench.presets import Preset
from bench.storage import storage_root
from bench.validate import ArchitectureReport, validate_zoo, write_report


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


def run_validate(preset: Preset, root: Path | None) -> int:
    console = Console()
    base_root = storage_root(root)
    started = time.perf_counter()
    ctx = get_context(preset, base_root)  # builds what is missing and materialises the tasks
    zoo = ctx.zoo
    console.print(f"zoo {zoo.hash} ready in {time.perf_counter() - started:.1f}s under {base_root / 'zoo'}")
    reports = validate_zoo(zoo, preset, ctx.tasks)
    for report in reports:
        _render(console, report)
    write_report(reports, base_root / "validate" / f"{preset.name}-{zoo.hash}.json")
    failures = [failure for report in reports for failure in report.failures]
    console.print(f"validation took {time.perf_counter() - started:.1f}s")
    if failures:
        console.print(f"[bold red]VALIDITY RULE FAILED ({len(failures)}):[/]")
        for failure in failures:
            console.print(f"  - {failure}")
        return 1
    console.print("[bold green]validity rule holds for every architecture[/]")
    return 0
