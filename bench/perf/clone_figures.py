"""The figures a newcomer sees: `make bench` and `make test` on a fresh clone, timed from outside.

The clone is of the checkout's HEAD commit, in the work folder, with its own `.venv` and storage root, so
the cold run pays what a fresh machine pays: the virtual environment, the zoo, every release and cell.
The same `make bench` again then gives the cached re-run of `default` (the cache figure's second preset).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.perf import REPO, Figure

#: Variables that would point the clone at this checkout's state instead of its own.
INHERITED = ("LOCKBENCH_HOME", "LOCKBENCH_TEST_CI_ROOT", "RAY_ADDRESS", "LOCKBENCH_FAULT", "VIRTUAL_ENV",
             "PYTHONPATH")


def fresh_clone(work: Path) -> tuple[Path, str]:
    """A clean clone of HEAD under `work` (replacing an older one); returns it and the commit."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    clone = work / f"clone-{commit[:12]}"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
    return clone, commit


def timed_make(clone: Path, target: str, log: Path) -> tuple[float, int]:
    """`make TARGET` in the clone with a clean environment; (minutes, exit code), output in `log`."""
    env = {key: value for key, value in os.environ.items() if key not in INHERITED}
    started = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.run(["make", target], cwd=clone, env=env, stdout=stream, stderr=subprocess.STDOUT)
    return (time.perf_counter() - started) / 60, process.returncode


def figures_fresh_clone(work: Path, with_tests: bool = True) -> list[Figure]:
    """bench_cold (cold `make bench`, ≤ 20 min), cache_default (the same again, ≤ 2 % of it) and, with
    `with_tests`, make_test (≤ 15 min) on one fresh clone."""
    clone, commit = fresh_clone(work)
    figures: list[Figure] = []
    cold_min, cold_rc = timed_make(clone, "bench", work / "bench-cold.log")
    cold = Figure("bench_cold", "cold `make bench` on a fresh clone (minutes)", "default", unit=" min")
    cold.check(cold_min, "<=", 20.0)
    cold.details = {"minutes": round(cold_min, 1), "exit_code": cold_rc, "commit": commit[:12], "clone": str(clone),
                    "cpus": os.cpu_count(), "log": str(work / "bench-cold.log")}
    cold.notes.append("from `git clone` to the published leaderboard: the virtual environment, the zoo, "
                      "validation, every release and cell of `default` (3 seeds), publishing")
    figures.append(cold)
    cached_min, cached_rc = timed_make(clone, "bench", work / "bench-cached.log")
    cache = Figure("cache_default", "cached `make bench` / cold `make bench`", "default", unit="%")
    cache.check(100 * cached_min / cold_min, "<=", 2.0)
    cache.details = {"cold_min": round(cold_min, 2), "cached_min": round(cached_min, 3), "exit_code": cached_rc}
    cache.notes.append("the same `make bench` again in the same clone: validation and run from the cache")
    figures.append(cache)
    if with_tests:
        test_min, test_rc = timed_make(clone, "test", work / "make-test.log")
        tests = Figure("make_test", "`make test` on the fresh clone (minutes)", "ci", unit=" min")
        tests.check(test_min, "<=", 15.0)
        tests.details = {"minutes": round(test_min, 1), "exit_code": test_rc, "log": str(work / "make-test.log")}
        tests.notes.append("the whole suite, slow tests included, then the regression gate on `smoke`; the "
                           "virtual environment already exists (built by the cold `make bench`)")
        figures.append(tests)
    return figures
