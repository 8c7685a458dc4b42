"""`make perf` with the measuring functions stubbed: every figure saved the moment it is measured, a
fresh-clone figure stopped at its budget, the default and `--clone` selections, the cost table, the clone
figures' arithmetic. The real figures take minutes to hours and are printed by `make perf`, never asserted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pandas as pd
import pytest

from bench.perf import CLONE_FIGURES, FIGURES, QUICK_FIGURES, REPO, Figure, clone_figures, cost, report, store
from bench.perf.__main__ import build_parser, main
from bench.runtime import offline


def perf(tmp_path: Path, *args: str) -> int:
    return main([*args, "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])


def saved(tmp_path: Path) -> dict[str, dict]:
    return {f["key"]: f for f in json.loads((tmp_path / "out" / "report.json").read_text())["figures"]}


@pytest.fixture(autouse=True)
def no_offline_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline, "enable_offline", lambda: None)  # would set variables for the whole session


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_each_figure_is_saved_before_the_next_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     stop: str) -> None:
    if stop == "sigterm" and threading.current_thread() is not threading.main_thread():
        pytest.skip("a signal handler can only be installed in the main thread")
    older = Figure("flops", "training / matmul FLOP/s", "smoke", value=20.0, unit="%", measured_at="2026-01-01T00:00",
                   commit="abc1234", tree="clean")
    store.save(tmp_path / "out", {"flops": older}, {})
    seen: dict[str, dict] = {}

    def second(ctx: object) -> Figure:
        seen.update(saved(tmp_path))
        if stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "in_process_context", lambda preset, work: object())
    monkeypatch.setattr(report, "figure_merge", lambda ctx: Figure("merge", "merge", "smoke", value=9.0))
    monkeypatch.setattr(report, "figure_lmeval", second)
    assert perf(tmp_path, "--only", "merge,lmeval") == 130
    assert seen["merge"]["value"] == 9.0 and seen["merge"]["measured_at"] and seen["merge"]["commit"]
    after = saved(tmp_path)
    assert set(after) == {"merge", "flops"}  # the interrupted figure is not recorded, the older one is kept
    assert (after["flops"]["measured_at"], after["flops"]["commit"]) == ("2026-01-01T00:00", "abc1234")
    assert "| mergekit" not in (tmp_path / "out" / "REPORT.md").read_text()
    assert "`merge`" in (tmp_path / "out" / "REPORT.md").read_text()
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes leave no temporary files


def test_a_failed_try_does_not_replace_a_measured_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(tmp_path / "out", {"merge": Figure("merge", "merge", "smoke", value=9.0, measured_at="then")}, {})
    monkeypatch.setattr(report, "in_process_context", lambda preset, work: object())

    def broken(ctx: object) -> Figure:
        raise RuntimeError("no mergekit")

    monkeypatch.setattr(report, "figure_merge", broken)
    assert perf(tmp_path, "--only", "merge") == 0
    merge = saved(tmp_path)["merge"]
    assert (merge["value"], merge["measured_at"], merge["last_attempt"]["status"]) == (9.0, "then", "error")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_clone_figure_past_its_budget_is_killed_and_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "pid"

    def clone(work: Path) -> tuple[Path, str]:
        (work / "clone").mkdir(parents=True, exist_ok=True)
        return work / "clone", "0123456789abcdef"

    monkeypatch.setattr(clone_figures, "fresh_clone", clone)
    monkeypatch.setattr(clone_figures, "make_command",
                        lambda target: ["sh", "-c", f"sleep 30 & echo $! > {pid_file}; wait"])
    assert perf(tmp_path, "--only", "bench_cold", "--budget", "bench_cold=0.01") == 0
    cold = saved(tmp_path)["bench_cold"]
    assert (cold["status"], cold["value"], cold["passed"]) == ("over budget", 0.01, False)
    assert cold["details"]["budget_min"] == 0.01 and cold["details"]["exit_code"] is None
    assert not alive(int(pid_file.read_text()))  # the whole process group went, not only `make`
    figure = Figure.from_dict(cold)
    assert (store.format_value(figure), store.verdict(figure)) == ("> 0.0 min", "over budget")


def test_default_is_the_quick_set_and_clone_is_opt_in(tmp_path: Path) -> None:
    def chosen(*argv: str) -> tuple[str, ...]:
        return report.select(build_parser().parse_args(list(argv)))

    def planned(*argv: str) -> list[tuple[str, ...]]:
        args = build_parser().parse_args(list(argv))
        return [step.keys for step in report.plan(args, report.select(args), tmp_path)]

    assert chosen() == QUICK_FIGURES and not set(chosen()) & set(CLONE_FIGURES)
    assert planned() == [("cost",), ("cache", "ray"), ("merge",), ("lmeval",), ("trap2",), ("flops",)]
    assert planned("--clone") == [("bench_cold",), ("cache_default",), ("make_test",)]
    assert chosen("--clone") == CLONE_FIGURES == ("bench_cold", "cache_default", "make_test")
    assert chosen("--all") == FIGURES
    assert chosen("--only", "make_test,bench_cold") == ("bench_cold", "make_test")
    with pytest.raises(ValueError, match="unknown"):
        chosen("--only", "nope")
    assert report.budgets(build_parser().parse_args(["--budget", "make_test=5"]))["make_test"] == 5.0
    with pytest.raises(ValueError, match="budget"):
        report.budgets(build_parser().parse_args(["--budget", "merge=5"]))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_perf_passes_its_arguments() -> None:
    dry = subprocess.run(["make", "-n", "perf", "PERF_ARGS=--clone"], cwd=REPO, capture_output=True, text=True)
    assert "-m bench.perf --clone" in dry.stdout


def cells_frame() -> pd.DataFrame:
    def row(track: str, defense: str, seed: int, task: str, attack: str, attack_s: float | None,
            defense_s: float | None) -> dict[str, object]:
        return {"track": track, "defense": defense, "defense_config": "{}", "release_format": "full", "model": "m",
                "seed": seed, "task": task, "attack": attack, "status": "ok" if attack_s is not None else "n/a",
                "attack_seconds": attack_s, "defense_seconds": defense_s}

    return pd.DataFrame([
        row("merge", "pmp", 0, "a", "task_arithmetic", 2.0, 10.0),
        row("merge", "pmp", 0, "a", "distill_merge", 30.0, 10.0),  # same release: its seconds count once
        row("merge", "none", 0, "a", "task_arithmetic", 1.0, 0.0),
        row("merge", "none", 1, "a", "task_arithmetic", 1.0, 20.0),
        row("finetune", "trap2", 0, "d1", "lora_finetune", 5.0, 40.0),
        row("finetune", "trap2", 0, "d2", "lora_finetune", 5.0, 40.0),  # finetune: one release, two tasks
        row("finetune", "anti_finetune", 0, "d1", "lora_finetune", None, None),  # n/a: nothing spent
    ])


def test_cost_table_splits_worker_seconds_by_kind(tmp_path: Path) -> None:
    table = cost.cost_table(cells_frame())
    got = {(r.kind, r.name): (r.items, r.worker_seconds) for r in table.itertuples()}
    assert got == {
        ("releases", "pmp"): (1, 10.0), ("releases", "none"): (1, 0.0), ("releases", "trap2"): (1, 40.0),
        ("none re-trained releases (seed ≠ 0)", "none"): (1, 20.0),
        ("merge cells", "task_arithmetic"): (3, 4.0), ("merge cells", "distill_merge"): (1, 30.0),
        ("fine-tuning attack cells", "lora_finetune"): (2, 10.0),
    }
    assert table["share"].sum() == pytest.approx(1.0)
    assert list(table["worker_seconds"]) == sorted(table["worker_seconds"], reverse=True)
    run = tmp_path / "runs" / "default"
    run.mkdir(parents=True)
    cells_frame().to_csv(run / "cells.csv", index=False)
    figure = cost.figure_cost(run)
    assert figure.status == "measured" and figure.value == pytest.approx(114 / 60)
    assert figure.table[-1]["worker-seconds"] == 114.0 and figure.details["releases"] == 4
    assert "| kind of work | what | items | worker-seconds | share |" in store.render([figure], {})
    assert cost.figure_cost(tmp_path / "absent").status == "not available"


def test_fresh_clone_figures_compare_with_their_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    minutes = {"bench": iter([60.0, 0.9]), "test": iter([14.0])}
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    monkeypatch.setattr(clone_figures, "fresh_clone", lambda work: (clone, "0123456789abcdef"))
    monkeypatch.setattr(clone_figures, "existing_clone", lambda work: (clone, "0123456789abcdef"))
    monkeypatch.setattr(clone_figures, "timed_make",
                        lambda clone, target, log, budget: clone_figures.MakeRun(next(minutes[target]), 0, False))
    cold = clone_figures.figure_bench_cold(tmp_path, 90.0)
    cache = clone_figures.figure_cache_default(tmp_path, 10.0)
    tests = clone_figures.figure_make_test(tmp_path, 40.0)
    assert (cold.key, cold.value, cold.passed, cold.target) == ("bench_cold", 60.0, False, "<= 20 min")
    assert (cache.key, cache.passed) == ("cache_default", True) and cache.value == pytest.approx(1.5)
    assert (tests.key, tests.value, tests.passed) == ("make_test", 14.0, True)
    assert [store.format_value(f) for f in (cold, cache, tests)] == ["60.0 min", "1.50%", "14.0 min"]
    assert [store.verdict(f) for f in (cold, cache, tests)] == ["MISS", "PASS", "PASS"]
    (clone / clone_figures.COLD_MARK).unlink()
    assert clone_figures.figure_cache_default(tmp_path, 10.0).status == "not available"
