"""Measure the chosen figures one step at a time, each guarded so one failure does not hide the others, and
merge each into the report on disk as soon as it is measured, so an interrupted run loses only the figure in
progress."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.harness.context import get_context
from bench.perf import BUDGET_MIN, CLONE_FIGURES, ESTIMATE_MIN, FIGURES, QUICK_FIGURES, REPO, Figure, store
from bench.perf.clone_figures import figure_bench_cold, figure_cache_default, figure_make_test
from bench.perf.compute_figures import figure_flops, figure_lmeval, figure_merge, figure_trap2
from bench.perf.cost import figure_cost
from bench.perf.harness_figures import figure_cache, figure_ray, figures_cache_and_ray
from bench.perf.runs import build_zoo
from bench.perf.store import format_value, verdict
from bench.presets import load_preset
from bench.runtime.offline import enable_offline

__all__ = ["format_value", "verdict", "report", "select", "budgets"]


@dataclass
class Step:
    """Figures measured together (cache and ray share their runs), then saved."""

    keys: tuple[str, ...]
    preset: str
    build: Callable[[], list[Figure]]


def select(args: argparse.Namespace) -> tuple[str, ...]:
    """`--only` as given; else `--all`, `--clone` or, by default, the quick figures; in report order."""
    if args.only:
        chosen = {key.strip() for key in args.only.split(",") if key.strip()}
    elif args.all:
        chosen = set(FIGURES)
    elif args.clone:
        chosen = set(CLONE_FIGURES)
    else:
        chosen = set(QUICK_FIGURES)
    unknown = chosen - set(FIGURES)
    if unknown:
        raise ValueError(f"unknown figure(s) {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    return tuple(key for key in FIGURES if key in chosen)


def budgets(args: argparse.Namespace) -> dict[str, float]:
    """BUDGET_MIN with the `--budget KEY=MINUTES` overrides."""
    chosen = dict(BUDGET_MIN)
    for item in args.budget or []:
        key, _, minutes = item.partition("=")
        if key not in BUDGET_MIN:
            raise ValueError(f"--budget {item}: only {', '.join(BUDGET_MIN)} have a budget")
        chosen[key] = float(minutes)
    return chosen


def working_tree() -> tuple[str, str]:
    """HEAD's short commit and whether the working tree has uncommitted changes (what the quick figures time)."""
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return commit, f"dirty ({len(changed)} paths)" if changed else "clean"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_meta() -> dict[str, Any]:

    commit, tree = working_tree()
    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "absent"
    return {"args": " ".join(sys.argv[1:]), "date": now(), "commit": commit, "tree": tree, "cpus": os.cpu_count(),
            "torch": torch, "python": platform.python_version()}


def now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def in_process_context(preset: str, work: Path) -> Any:
    """The harness context of `preset` (zoo built in a child process first), shared by the in-process figures."""

    root = work / f"zoo-{preset}"
    build_zoo(preset, root)
    return get_context(load_preset(preset), root)


def plan(args: argparse.Namespace, keys: tuple[str, ...], work: Path) -> list[Step]:
    """The steps measuring `keys`, in report order."""
    preset = args.preset
    cache_preset = args.cache_preset or ("default" if args.full else preset)
    limits = budgets(args)
    contexts: dict[str, Any] = {}

    def ctx() -> Any:  # built once; a failure is remembered, not retried for every in-process figure
        if "ctx" not in contexts:
            try:
                contexts["ctx"] = in_process_context(preset, work)
            except Exception as error:
                contexts["ctx"] = error
        if isinstance(contexts["ctx"], Exception):
            raise RuntimeError(f"building the `{preset}` zoo failed: {contexts['ctx']}")
        return contexts["ctx"]

    steps: list[Step] = []
    if "cost" in keys:
        steps.append(Step(("cost",), "run", lambda: [figure_cost(Path(args.run) if args.run else None)]))
    if {"cache", "ray"} <= set(keys) and cache_preset == preset:
        steps.append(Step(("cache", "ray"), preset, lambda: figures_cache_and_ray(preset, work)))
    else:
        if "cache" in keys:
            steps.append(Step(("cache",), cache_preset, lambda: [figure_cache(cache_preset, work)]))
        if "ray" in keys:
            steps.append(Step(("ray",), preset, lambda: [figure_ray(preset, work)]))
    in_process: dict[str, Callable[[], Figure]] = {
        "merge": lambda: figure_merge(ctx()), "lmeval": lambda: figure_lmeval(ctx()),
        "trap2": lambda: figure_trap2(ctx()), "flops": lambda: figure_flops(ctx()),
    }
    clone: dict[str, Callable[[], Figure]] = {
        "bench_cold": lambda: figure_bench_cold(work, limits["bench_cold"]),
        "cache_default": lambda: figure_cache_default(work, limits["cache_default"]),
        "make_test": lambda: figure_make_test(work, limits["make_test"]),
    }
    for key in keys:
        if key in in_process:
            steps.append(Step((key,), preset, lambda build=in_process[key]: [build()]))
        elif key in clone:
            steps.append(Step((key,), "default", lambda build=clone[key]: [build()]))
    return steps


def estimate_min(step: Step, previous: dict[str, Figure], limits: dict[str, float]) -> float:
    """Minutes the step is expected to take: its last recorded duration, else ESTIMATE_MIN; at most a budget."""
    seconds = [previous[k].details.get("figure_seconds") for k in step.keys if k in previous]
    known = [s for s in seconds if isinstance(s, int | float)]
    minutes = max(known) / 60 if known else max(ESTIMATE_MIN.get(k, 1.0) for k in step.keys)
    caps = [limits[k] for k in step.keys if k in limits]
    return min([minutes, *caps])


def measure(step: Step) -> list[Figure]:
    """The step's figures; an exception becomes an "error" figure for each key rather than stopping the run."""
    try:
        return step.build()
    except Exception as error:  # one broken figure must not hide the others
        return [Figure(key, key, step.preset, status="error", notes=[f"{type(error).__name__}: {error}"[:2000]])
                for key in step.keys]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    figures, old_meta = store.load(out)
    if args.render:
        store.save(out, figures, old_meta)
        print(f"[perf] rewrote {out / store.MARKDOWN_FILE} from {out / store.JSON_FILE}", flush=True)
        return 0
    try:
        keys, limits = select(args), budgets(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    enable_offline()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    meta = run_meta()
    steps = plan(args, keys, work)
    print(f"[perf] {len(keys)} figure(s): {', '.join(keys)}; each saved to {out / store.JSON_FILE} when measured "
          f"(commit {meta['commit']}, working tree {meta['tree']})", flush=True)
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    done, kept = 0, []
    try:
        for step in steps:
            span = f"{done + 1}" if len(step.keys) == 1 else f"{done + 1}-{done + len(step.keys)}"
            print(f"[perf] figure {span}/{len(keys)}: {', '.join(step.keys)} on {step.preset}, estimated "
                  f"~{estimate_min(step, figures, limits):.1f} min …", flush=True)
            started, load_before = time.perf_counter(), load_average()
            built = measure(step)
            seconds = round(time.perf_counter() - started, 1)
            for figure in built:
                figure.details.setdefault("figure_seconds", seconds)
                figure.measured_at, figure.commit, figure.tree = now(), meta["commit"], meta["tree"]
                figure.context = {"cpus": os.cpu_count(), "torch": meta["torch"], "load_before": load_before,
                                  "load_after": load_average(), "args": meta["args"]}
                kept.append(store.merge(figures, figure))
                print(f"[perf]   {figure.key}: {format_value(figure)} (target {figure.target or '-'}): "
                      f"{verdict(figure)}" + ("" if kept[-1] is figure else "; the earlier measurement is kept"),
                      flush=True)
            store.save(out, figures, meta)
            done += len(step.keys)
    except KeyboardInterrupt:
        print(f"\n[perf] interrupted: {done} of {len(keys)} figure(s) measured and saved in {out / store.JSON_FILE}",
              file=sys.stderr, flush=True)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(f"[perf] report: {out / store.MARKDOWN_FILE}", flush=True)
    missed = [f.key for f in kept if f.passed is False or f.status == "error"]
    return 1 if args.strict and missed else 0
