"""Timed harness runs, each in a fresh process (`python -m bench.perf run-once`), and helpers to compare them."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness.context import get_context
from bench.perf import REPO, STAGE_DIRS
from bench.presets import load_preset
from bench.report.leaderboard import run_and_write
from bench.results import TIMING_COLUMNS
from bench.runtime.offline import OFFLINE_ENV

# ----------------------------------------------------------------------------- subprocess runs


def child_env(ray_home: Path | None = None) -> dict[str, str]:

    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "LOCKBENCH_FAULT")}
    env.update(OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if ray_home is not None:  # Ray writes ~/.ray/auth_token and /tmp/ray sessions: keep them private
        ray_home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(ray_home)
        env["RAY_TMPDIR"] = str(ray_home)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def run_once(preset: str, root: Path, out: Path, executor: str = "serial", workers: int = 2,
             profile: bool = False, ray_home: Path | None = None) -> dict[str, Any]:
    """Run the whole benchmark of `preset` in a fresh process; wall time measured from outside."""
    result_file = Path(tempfile.mkstemp(prefix="lbperf-", suffix=".json")[1])
    command = [sys.executable, "-m", "bench.perf", "run-once", "--preset", preset, "--root", str(root),
               "--out", str(out), "--executor", executor, "--workers", str(workers), "--result", str(result_file)]
    if profile:
        command.append("--profile")
    started = time.perf_counter()
    process = subprocess.run(command, env=child_env(ray_home), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    try:
        if process.returncode != 0:
            tail = (process.stderr or process.stdout)[-2000:]
            raise RuntimeError(f"run of {preset} ({executor}) exited {process.returncode}: {tail}")
        result = json.loads(result_file.read_text())
    finally:
        result_file.unlink(missing_ok=True)
    return {"wall_s": wall, **result}


def run_once_main(args: argparse.Namespace) -> None:
    """Child side of `run_once`: import, run, report what the parent cannot see (import time, profile)."""
    started = time.perf_counter()
    # local: a heavy library that only this code path uses
    from rich.console import Console

    imported = time.perf_counter()
    preset = load_preset(args.preset)
    kwargs: dict[str, Any] = {"num_cpus": args.workers, "cpus_per_task": 1} if args.executor == "ray" else {}
    console = Console(stderr=True, quiet=True)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    summary = run_and_write(preset, Path(args.root), Path(args.out), args.executor, console=console, **kwargs)
    if profiler:
        profiler.disable()
    finished = time.perf_counter()
    hotspots: list[str] = []
    if profiler:
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(25)
        hotspots = [line.strip() for line in buffer.getvalue().splitlines() if line.strip()][:40]
    Path(args.result).write_text(json.dumps({
        "import_s": imported - started, "run_s": finished - imported, "cells": summary.cells,
        "cached": summary.cached, "failed": summary.failed, "hotspots": hotspots,
    }))


def reset_stages(root: Path) -> None:
    for name in STAGE_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)


def same_cells(first: Path, second: Path) -> bool:
    """cells.csv of two runs agree on everything but wall-clock columns."""
    # local: a heavy library that only this code path uses
    import pandas as pd

    frames = []
    for run_dir in (first, second):
        frame = pd.read_csv(run_dir / "cells.csv", dtype=str, keep_default_na=False)
        frames.append(frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns]))
    return frames[0].equals(frames[1])


def build_zoo(preset: str, root: Path) -> float:
    """Build what a run of `preset` would (the grid's models and the tasks) in a fresh process; seconds."""
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "bench.perf", "build-zoo", "--preset", preset, "--root", str(root)],
                             env=child_env(), capture_output=True, text=True, cwd=REPO)
    if process.returncode != 0:
        raise RuntimeError(f"building the zoo of {preset} failed: {process.stderr[-2000:]}")
    return time.perf_counter() - started


def build_zoo_main(args: argparse.Namespace) -> None:

    get_context(load_preset(args.preset), Path(args.root))

