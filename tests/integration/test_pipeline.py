"""The pipeline's plumbing on the micro zoo with the scorer double (tests/fakes.FakeScorer): no lm-eval, so
the fast tier covers it. What lm-eval would score is covered by the slow tests of test_harness.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeScorer

from bench.presets.grid import PluginSpec
from bench.results import read_csv


def test_a_micro_run_scores_through_the_context_scorer_and_caches_apart(micro_preset, micro_zoo, tmp_path: Path,
                                                                        fake_scoring) -> None:
    from bench.harness.context import clear_contexts, get_context
    from bench.report.leaderboard import run_and_write

    root = micro_zoo.root
    grid = micro_preset.grid.model_copy(update={"defenses": [PluginSpec(name="none"), PluginSpec(name="params")],
                                                "models": ["llama"], "protected_tasks": ["sort"]})
    preset = micro_preset.model_copy(update={"grid": grid})
    first = run_and_write(preset, root, tmp_path / "first")
    assert first.failed == 0 and first.cells > 0
    cells = read_csv(tmp_path / "first" / "cells.csv", "cells")
    ok = cells[cells.status == "ok"]
    not_ok = cells[cells.status != "ok"]
    assert set(not_ok.status) <= {"n/a"} and set(not_ok.defense) <= {"params"}  # full weights only (declared)
    ctx = get_context(preset, root)
    assert ctx.scorer.name == "fake" and ctx.cache_salt == ("scorer:fake",)
    # `none` releases the zoo's own expert at seed 0: its utility is the double's number for that expert
    none_row = ok[(ok.track == "merge") & (ok.defense == "none") & (ok.release_format == "full")].iloc[0]
    assert none_row.utility == pytest.approx(FakeScorer.accuracy(ctx.zoo.load_expert("llama", none_row.task),
                                                                 none_row.task))
    second = run_and_write(preset, root, tmp_path / "second")
    assert second.cached == second.cells  # resumed from the double's own cache entries
    from bench.harness.grid import expand
    from bench.harness.stages import cell_path

    cell = expand(grid, {"llama": preset.zoo.expert_tasks_of("llama")}, list(preset.zoo.downstream_tasks))[0]
    fake_path = cell_path(ctx, cell)
    clear_contexts()
    monkeypatch_env = pytest.MonkeyPatch()
    monkeypatch_env.delenv("LOCKBENCH_SCORER")
    try:
        assert cell_path(get_context(preset, root), cell) != fake_path  # lm-eval's cells are keyed apart
    finally:
        monkeypatch_env.undo()


def test_a_run_returns_its_data_and_writing_is_a_step_of_its_own(micro_preset, micro_zoo, tmp_path: Path,
                                                                 fake_scoring) -> None:
    """`run_benchmark` returns the scored cells and the board and writes no result file; `write_run` writes
    exactly those rows, so no command needs to read back a CSV it just wrote."""
    from bench.harness.run import run_benchmark
    from bench.report.leaderboard import write_run

    grid = micro_preset.grid.model_copy(update={"models": ["llama"], "protected_tasks": ["sort"], "seeds": [0]})
    summary = run_benchmark(micro_preset.model_copy(update={"grid": grid}), micro_zoo.root, tmp_path / "run")
    assert summary.frame is not None and len(summary.frame) == summary.cells
    assert not (tmp_path / "run" / "cells.csv").exists() and not (tmp_path / "run" / "README.md").exists()
    board = summary.board
    assert set(board["defense"]) == set(summary.frame["defense"]) - {"control"}
    write_run(summary)
    written = read_csv(tmp_path / "run" / "cells.csv", "cells")
    key = ["defense", "track", "release_format", "task", "members", "attack_key", "seed"]
    ordered = summary.frame.sort_values(key).reset_index(drop=True)
    assert written.sort_values(key).reset_index(drop=True).equals(ordered)
    assert read_csv(tmp_path / "run" / "leaderboard.csv", "leaderboard")["defense"].tolist() == board["defense"].tolist()
    # the stages write the CSV's own names (gain_b0125 …), and each budget's column is filled
    tuned = written[(written["track"] == "finetune") & (written["status"] == "ok")]
    budgets = ["gain_b0125", "gain_b025", "gain_b05", "gain_b1", "acc_b0125", "acc_b05"]
    assert len(tuned) and tuned[budgets].notna().all().all()


def test_a_cell_waits_on_its_release_not_on_a_cell_of_the_same_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """Releases and cells are numbered separately; a cell's `after` names releases only, so a failed cell
    0 must not fail another cell of release 0."""
    import bench.harness.executors as executors

    seen: dict[tuple[str, int], tuple] = {}

    def fake_execute(preset_json, root, item, fractions, *needed):
        seen[(item.kind, item.index)] = needed
        return {"status": "failed", "error": "cell 0 broke"} if (item.kind, item.index) == ("cell", 0) else {
            "status": "ok", "of": f"{item.kind}{item.index}"}

    monkeypatch.setattr(executors, "execute", fake_execute)
    items = [executors.WorkItem(0, "defend", None), executors.WorkItem(0, "cell", None, after=(0,)),
             executors.WorkItem(1, "cell", None, after=(0,))]

    class Preset:
        def model_dump_json(self) -> str:
            return "{}"

    list(executors.SerialExecutor().map(Preset(), Path("."), items, [1.0]))
    assert seen[("cell", 1)] == ({"status": "ok", "of": "defend0"},)
