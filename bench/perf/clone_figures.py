"""The figures a newcomer sees: `make bench` and `make test` on a fresh clone, timed from outside.

The clone is of the checkout's HEAD commit (uncommitted changes are not in it), in the work folder, with its
own `.venv` and storage root, so the cold run pays what a fresh machine pays: the virtual environment, the
zoo, every release and cell. The same `make bench` again then gives the cached re-run of `default`. Each
`make` runs in its own process group under a wall-time budget: past it the group is killed and the figure
is "over budget", so a slow tree costs the budget, never a hung `make perf`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.perf import REPO, Figure

#: Variables that would point the clone at this checkout's state instead of its own.
INHERITED = ("LOCKBENCH_HOME", "LOCKBENCH_TEST_CI_ROOT", "RAY_ADDRESS", "LOCKBENCH_FAULT", "VIRTUAL_ENV",
             "PYTHONPATH")
#: In the clone: the finished cold `make bench`'s minutes, so `cache_default` can be measured in a later run.
COLD_MARK = ".perf-bench-cold.json"
TARGET_MIN = {"bench_cold": 20.0, "make_test": 15.0}
CACHE_TARGET_PERCENT = 2.0


@dataclass
class MakeRun:
    """One timed `make`: minutes (the budget when killed), exit code (None when killed), killed or not."""

    minutes: float
    exit_code: int | None
    over_budget: bool


def make_command(target: str) -> list[str]:
    return ["make", target]


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def clone_path(work: Path, commit: str) -> Path:
    return work / f"clone-{commit[:12]}"


def fresh_clone(work: Path) -> tuple[Path, str]:
    """A clean clone of HEAD under `work` (replacing an older one); returns it and the commit."""
    commit = head_commit()
    clone = clone_path(work, commit)
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
    return clone, commit


def existing_clone(work: Path) -> tuple[Path, str] | None:
    """The clone of HEAD a previous figure left, if any."""
    commit = head_commit()
    clone = clone_path(work, commit)
    return (clone, commit) if (clone / ".git").is_dir() else None


def kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group, then after 10 s SIGKILL whatever of it is left; reap the leader."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass
    process.wait()


def timed_make(clone: Path, target: str, log: Path, budget_min: float) -> MakeRun:
    """`make TARGET` in the clone with a clean environment, in its own process group, output in `log`."""
    env = {key: value for key, value in os.environ.items() if key not in INHERITED}
    started = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.Popen(make_command(target), cwd=clone, env=env, stdout=stream,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=budget_min * 60)
        except subprocess.TimeoutExpired:
            kill_group(process)
            return MakeRun(budget_min, None, True)
        except BaseException:  # Ctrl-C or SIGTERM of `make perf`: its own group does not get the signal
            kill_group(process)
            raise
    return MakeRun((time.perf_counter() - started) / 60, code, False)


def record(figure: Figure, run: MakeRun, value: float, bound: float, budget_min: float, log: Path) -> Figure:
    """Value and verdict of a timed figure; over budget: the value its budget implies, and a miss."""
    figure.check(value, "<=", bound)
    figure.details.update({"minutes": round(run.minutes, 2), "exit_code": run.exit_code, "budget_min": budget_min,
                           "log": str(log)})
    if run.over_budget:
        figure.status, figure.passed = "over budget", False
        figure.notes.append(f"killed after its budget of {budget_min:g} min (`--budget {figure.key}=MINUTES`); "
                            "the value is a lower bound")
    elif run.exit_code != 0:
        figure.status = "error"
        figure.notes.append(f"`make` exited {run.exit_code}: see {log}")
    return figure


def figure_bench_cold(work: Path, budget_min: float) -> Figure:
    """Cold `make bench` on a fresh clone (<= 20 min); leaves the clone and its minutes for cache_default."""
    clone, commit = fresh_clone(work)
    log = work / "bench-cold.log"
    run = timed_make(clone, "bench", log, budget_min)
    figure = Figure("bench_cold", "cold `make bench` on a fresh clone (minutes)", "default", unit=" min")
    figure.details = {"clone_of": commit[:12], "clone": str(clone), "cpus": os.cpu_count()}
    figure.notes.append("from `git clone` of HEAD to the published leaderboard: the virtual environment, the zoo, "
                        "validation, every release and cell of `default` (3 seeds), publishing")
    record(figure, run, run.minutes, TARGET_MIN["bench_cold"], budget_min, log)
    if figure.status == "measured":
        (clone / COLD_MARK).write_text(json.dumps({"minutes": run.minutes}))
    return figure


def figure_cache_default(work: Path, budget_min: float) -> Figure:
    """The same `make bench` again in the clone bench_cold finished, over the cold one (<= 2 %)."""
    figure = Figure("cache_default", "cached `make bench` / cold `make bench`", "default", unit="%")
    found = existing_clone(work)
    if found is None or not (found[0] / COLD_MARK).is_file():
        figure.status = "not available"
        figure.notes.append("needs a finished cold `make bench` on the clone of HEAD: measure bench_cold first "
                            "(`--only bench_cold,cache_default`)")
        return figure
    clone, commit = found
    cold_min = json.loads((clone / COLD_MARK).read_text())["minutes"]
    log = work / "bench-cached.log"
    run = timed_make(clone, "bench", log, budget_min)
    figure.details = {"clone_of": commit[:12], "cold_min": round(cold_min, 2)}
    figure.notes.append("the same `make bench` again in the same clone: validation and run from the cache")
    return record(figure, run, 100 * run.minutes / cold_min, CACHE_TARGET_PERCENT, budget_min, log)


def figure_make_test(work: Path, budget_min: float) -> Figure:
    """`make test` on the clone of HEAD (<= 15 min); a fresh clone when none is left from bench_cold."""
    found = existing_clone(work)
    clone, commit = found if found is not None else fresh_clone(work)
    had_venv = (clone / ".venv").is_dir()
    log = work / "make-test.log"
    run = timed_make(clone, "test", log, budget_min)
    figure = Figure("make_test", "`make test` on the fresh clone (minutes)", "ci", unit=" min")
    figure.details = {"clone_of": commit[:12], "venv_existed": had_venv}
    figure.notes.append("the whole suite, slow tests included, then the regression gate on `smoke`; "
                        + ("the virtual environment already existed (built by the cold `make bench`)" if had_venv
                           else "building the virtual environment included"))
    return record(figure, run, run.minutes, TARGET_MIN["make_test"], budget_min, log)
