"""`lockbench submit --attack`: third-party attacks are checked, validated on `none`, run against the preset's
defenses, filed with whether they break them, and usable in presets by name.

Static checks run on files written to a temporary directory, with `--check --no-dry-run` (no zoo, no
compute). The comparison and the `none` verdicts are checked on the hand-built synthetic run of
tests/fakes.py. End to end, on a one-model slice of the micro preset (plumbing: micro's attacks are weak
by construction), a copy of examples/scaled_merge.py is refused as weak, then filed with --allow-weak.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.commands.cli import app
from bench.plugins import ATTACKS
from bench.runtime.offline import OFFLINE_ENV
from bench.zoo.build import Zoo

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "scaled_merge.py"
runner = CliRunner()

HEADER = "from bench.plugins import Attack, AttackOutput\nfrom bench.config import StrictModel\n"
GOOD = """
class Sharp(Attack):
    name = "sharp"
    description = "a fine attack"
    track = "merge"
    family = "pinned"

    def run(self, view):
        return AttackOutput(models={1.0: view.release}, knobs={})
"""
BAD_SOURCES: dict[str, tuple[str, str]] = {
    "missing family": (GOOD.replace('    family = "pinned"\n', ""),
                       "Sharp.family is not declared: set family = one of pinned, rescaling, aligning, data, finetune"),
    "unknown family": (GOOD.replace('"pinned"', '"sneaky"'), "Sharp.family 'sneaky' is not an attack family"),
    "bad track": (GOOD.replace('track = "merge"', 'track = "distill"'),
                  "Sharp.track must be 'merge' or 'finetune', got 'distill'"),
    "tracks like a defense": (GOOD.replace('track = "merge"', 'tracks = frozenset({"merge"})'),
                              "Sharp.track is not declared: set track = 'merge' or 'finetune' (an attack has one"),
    "family of the other track": (GOOD.replace('track = "merge"', 'track = "finetune"'),
                                  "Sharp.family 'pinned' is a merge-track family, but track is 'finetune'"),
    "missing run": (GOOD.split("    def run")[0], "Sharp is missing the method run(self, view: PublicView) -> AttackOutput"),
    "run signature": (GOOD.replace("run(self, view)", "run(self, view, key)"),
                      "must accept exactly one argument besides self: the PublicView"),
    "not a subclass": ("class Sharp:\n    def run(self, view):\n        return view\n",
                       "Sharp in {path} is not an Attack subclass"),
    "nothing to find": ("X = 1\n", "no Attack subclass found in {path}"),
    "plain pydantic Config": ("from pydantic import BaseModel\nclass C(BaseModel):\n    x: int = 1\n"
                              + GOOD.replace("    def run", "    Config = C\n\n    def run"),
                              "Sharp.Config must subclass bench.config.StrictModel"),
    "name of a built-in": (GOOD.replace('name = "sharp"', 'name = "task_arithmetic"'),
                           "attack name 'task_arithmetic' is taken by attacks.mergekit_methods.MergeTaskArithmetic"),
}


@contextlib.contextmanager
def restored_attacks() -> Iterator[None]:
    """Submissions register in the process-wide registry; later tests (and other modules) must not see them.
    The built-ins are loaded first: their modules register only once per process."""
    with ATTACKS.scoped():
        yield


@pytest.fixture(autouse=True)
def _registry() -> Iterator[None]:
    with restored_attacks():
        yield


def _write(tmp_path: Path, source: str, name: str = "attack.py") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(source))
    return path


def _check(*args: str) -> list[str]:
    return ["submit", "--attack", *args, "--preset", "micro", "--check", "--no-dry-run"]


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_attacks_fail_fast_with_one_line_each(tmp_path: Path, case: str) -> None:
    source, message = BAD_SOURCES[case]
    path = _write(tmp_path, source)
    result = runner.invoke(app, [*_check(str(path)), "--root", str(tmp_path / "root")])
    assert result.exit_code == 2, result.output
    assert message.replace("{path}", str(path)) in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), lines
    assert not (tmp_path / "root").exists(), "nothing may be built before the submission is valid"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "class Bad(Attack):\n    track = 'distill'\n")
    result = runner.invoke(app, _check(str(path)))
    assert result.exit_code == 2
    for message in ("Bad is missing the method run", "missing the class attribute name",
                    "missing the class attribute description", "Bad.track must be 'merge' or 'finetune'",
                    "Bad.family is not declared"):
        assert message in result.output, result.output


def test_the_example_and_its_config_are_checked() -> None:
    result = runner.invoke(app, [*_check(str(EXAMPLE)), "--config", '{"release_wieght": 0.5}'])
    assert result.exit_code == 2, result.output
    assert ('ScaledMerge.Config rejects config {"release_wieght": 0.5}: release_wieght: Extra inputs are not '
            "permitted") in result.output
    result = runner.invoke(app, _check(str(EXAMPLE)))
    assert result.exit_code == 0, result.output
    assert "'scaled_merge'" in result.output and "track merge, family rescaling" in result.output
    pinned = runner.invoke(app, [*_check(str(EXAMPLE)), "--config", '{"release_weight": 1.0}'])
    assert pinned.exit_code == 0 and "family pinned" in pinned.output, "attack_family refines it per config"


def test_modules_classes_and_unknown_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    _write(tmp_path, GOOD + GOOD.replace("class Sharp", "class Blunt").replace('"sharp"', '"blunt"'),
           "lockbench_test_two_attacks.py")
    result = runner.invoke(app, _check("lockbench_test_two_attacks"))
    assert result.exit_code == 2 and "several Attack subclasses (Sharp, Blunt)" in result.output, result.output
    result = runner.invoke(app, _check("lockbench_test_two_attacks:Blunt"))
    assert result.exit_code == 0 and "'blunt' from module lockbench_test_two_attacks" in result.output, result.output
    result = runner.invoke(app, _check("no_such_attack_anywhere"))
    assert result.exit_code == 2
    assert "neither a file, an installed 'lockbench.attacks' entry point nor an importable module" in result.output


def test_allow_weak_is_for_attacks_only() -> None:
    result = runner.invoke(app, ["submit", str(EXAMPLE), "--allow-weak", "--check", "--no-dry-run"])
    assert result.exit_code == 2 and "--allow-weak applies only to attack submissions" in result.output


# ----------------------------------------------------------------------------- registration


def test_listed_attacks_register_under_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.commands.submit_attack import ATTACKS_ENV, register_listed_attacks

    monkeypatch.chdir(REPO)
    monkeypatch.setenv(ATTACKS_ENV, "examples/scaled_merge.py")
    assert register_listed_attacks() == ["scaled_merge"]
    assert ATTACKS.get("scaled_merge").family == "rescaling"
    assert os.environ[ATTACKS_ENV] == str(EXAMPLE), "made absolute for workers in other directories"


def test_ray_workers_register_the_submission(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `worker_process_setup_hook` runs: the hashed name (the cache key) and the plain one."""
    from bench.commands.submit_attack import WORKER_ENV, prepare_attack, worker_setup

    config = {"release_weight": 0.25}
    expected = prepare_attack(str(EXAMPLE), config).registered_name
    ATTACKS.unregister("scaled_merge")
    monkeypatch.setenv(WORKER_ENV, json.dumps({"spec": str(EXAMPLE), "config": config, "salt": ""}))
    worker_setup()
    hashed = ATTACKS.get(expected)
    assert expected.startswith("scaled_merge@") and issubclass(hashed, ATTACKS.get("scaled_merge"))
    assert hashed.attack_family(hashed.Config(**config)) == "rescaling"


@pytest.mark.slow
def test_a_preset_can_name_a_submitted_attack_in_another_process(tmp_path: Path) -> None:
    """LOCKBENCH_PLUGINS=bench.commands.submit_attack with LOCKBENCH_ATTACKS: the grid expands with it, as the driver
    and every worker do before a run (bench.harness.executors.import_plugin_modules)."""
    script = textwrap.dedent("""
        from bench.harness.executors import import_plugin_modules
        from bench.harness.grid import expand
        from bench.presets.grid import GridConfig
        import_plugin_modules()
        grid = GridConfig(defenses=[{"name": "none"}], merge_attacks=[{"name": "scaled_merge"}], seeds=[0],
                          release_formats=["full"])
        cells = expand(grid, {"llama": ["sort", "max"]}, [])
        print(sorted({(c.defense.defense, c.attack_label) for c in cells}))
    """)
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(OFFLINE_ENV, LOCKBENCH_PLUGINS="bench.commands.submit_attack", LOCKBENCH_ATTACKS="examples/scaled_merge.py")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "('control', 'scaled_merge'), ('none', 'scaled_merge')" in done.stdout, done.stdout


# ----------------------------------------------------------------------------- verdicts and comparison (synthetic run)


@pytest.fixture(scope="module")
def scored() -> pd.DataFrame:
    from fakes import valid_raw_frame

    from bench.results import ValidityRule, score_cells

    return score_cells(valid_raw_frame(), ValidityRule())


def test_none_verdicts_and_the_weak_refusal(scored: pd.DataFrame) -> None:
    from bench.commands.submit_attack import none_verdicts, refusal

    weak = none_verdicts(scored, "ties")
    assert weak[["model", "task", "members", "verdict"]].values.tolist() == [["llama", "add", "reverse", "weak"]]
    assert "joint kept fraction" in weak["why"].iloc[0]
    message = refusal(weak, "ties", "fake", allow_weak=False)
    assert message and message.startswith("refused: ties is weak against 'none' on every input of preset 'fake'")
    assert refusal(weak, "ties", "fake", allow_weak=True) is None
    assert none_verdicts(scored, "ta")["verdict"].tolist() == ["valid"]
    assert refusal(none_verdicts(scored, "ta"), "ta", "fake", allow_weak=False) is None


def test_breaks_compares_with_the_published_worst_case(scored: pd.DataFrame) -> None:
    """`ta` plays the submitted attack: trap2's success under it is (1/3) / 0.75 on the one live input (seed 0;
    at seed 1 none's pick keeps 0.375 < 0.5 and the input is void)."""
    from bench.commands.submit_attack import broken, compare
    from bench.results import aggregate

    success = (1 / 3) / 0.75
    trap2 = lambda frame: frame[(frame["defense"] == "trap2") & (frame["track"] == "merge")]  # noqa: E731
    alone = compare(scored, "ta", "pinned", None)
    assert alone["defense"].tolist() == ["trap2"], "none is the reference, finetune rows have no ta cell"
    row = alone.iloc[0]
    assert row["success"] == pytest.approx(success) and row["reference_source"] == "this run's other attacks"
    assert pd.isna(row["reference_worst"]) and not row["breaks"], "ties is void and orphan unmatched: nothing to beat"

    board = aggregate(scored)
    beaten = board.copy()
    beaten.loc[trap2(beaten).index, ["attack_success", "worst_attack"]] = [0.3, "published_attack"]
    row = compare(scored, "ta", "pinned", beaten).iloc[0]
    assert (row["reference_worst"], row["reference_attack"], row["reference_source"]) == (0.3, "published_attack",
                                                                                          "published")
    assert row["breaks"] and row["new_worst"] == pytest.approx(success)
    assert broken(compare(scored, "ta", "pinned", beaten)) == [f"trap2 (llama/adapter: 0.300 → {success:.3f})"]
    close = beaten.copy()
    close.loc[trap2(close).index, "attack_success"] = success - 0.04
    assert not compare(scored, "ta", "pinned", close).iloc[0]["breaks"], "within the 0.05 margin"
    other_zoo = beaten.assign(zoo_hash="another")
    assert compare(scored, "ta", "pinned", other_zoo).iloc[0]["reference_source"] == "this run's other attacks"


def test_the_published_run_of_the_preset_is_found(scored: pd.DataFrame, tmp_path: Path) -> None:
    from bench.commands.submit_attack import published_board
    from bench.results import aggregate, write_csv

    (tmp_path / "micro").mkdir()
    write_csv(aggregate(scored), tmp_path / "micro" / "leaderboard.csv", "leaderboard")
    note, board = published_board(tmp_path, "micro")
    assert note == "published run leaderboard/micro" and board is not None and len(board)
    assert str(tmp_path) not in note, "the note is published: it names no local path"
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "leaderboard.csv").write_text("defense\nnone\n")
    note, board = published_board(tmp_path, "old")
    assert board is None and "does not pass the current schema" in note
    note, board = published_board(tmp_path, "smoke")
    assert board is None and note == "no published run of preset 'smoke' in the leaderboard it was filed into"


# ----------------------------------------------------------------------------- end to end (micro)

TINY_PRESET = """\
extends: micro
name: micro-llama-full
description: micro's zoo; llama only, full weights, one protected task (plumbing, not a valid benchmark)
grid:
  models: [llama]
  protected_tasks: [sort]
  release_formats: [full]
  defenses: [{name: none}, {name: merge_lock}, {name: anti_finetune}]
"""


@pytest.fixture(scope="module")
def filed(micro_zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A copy of the example, outside the repository: refused as weak, then filed with --allow-weak."""
    tmp = tmp_path_factory.mktemp("submit-attack")
    preset = tmp / "micro-llama-full.yaml"
    preset.write_text(TINY_PRESET)
    outside = tmp / "elsewhere" / "my_attack.py"
    outside.parent.mkdir()
    outside.write_text(EXAMPLE.read_text())
    board = tmp / "leaderboard"
    common = ["submit", "--attack", str(outside), "--preset", str(preset), "--root", str(micro_zoo.root),
              "--leaderboard-dir", str(board), "--out", str(tmp / "run")]
    with restored_attacks():
        refused = runner.invoke(app, common)
        nothing_filed = not (board / "submissions").exists()
        accepted = runner.invoke(app, [*common, "--allow-weak", "--allow-invalid"])
    return {"board": board, "outside": outside, "refused": refused, "nothing_filed": nothing_filed, "filed": accepted}


@pytest.mark.slow
def test_an_attack_weak_everywhere_is_refused_with_the_measured_reason(filed: dict) -> None:
    result = filed["refused"]
    assert result.exit_code == 1, result.output
    assert "weak on none, merge llama/full task sort with max: expert gain" in result.output
    assert "error: refused: scaled_merge is weak against 'none' on every input of preset 'micro-llama-full'" \
        in result.output
    assert filed["nothing_filed"]


@pytest.mark.slow
def test_an_attack_is_filed_against_the_defenses_of_its_track(filed: dict) -> None:
    result = filed["filed"]
    assert result.exit_code == 0, result.output
    assert "breaks no defense of the preset" in result.output
    assert "LOCKBENCH_PLUGINS=bench.commands.submit_attack LOCKBENCH_ATTACKS=" in result.output
    folder = filed["board"] / "submissions" / "scaled_merge"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "cells.csv", "leaderboard.csv",
                                                        "submission.json", "utility_vs_attack.png"]
    cells = pd.read_csv(folder / "cells.csv", dtype=str, keep_default_na=False)
    assert set(cells["defense"]) == {"none", "merge_lock", "control"}, "anti_finetune has no merge track"
    assert set(cells["attack"]) == {"scaled_merge", "task_arithmetic"}, "the preset's own attacks run beside it"
    mine = cells[cells["attack"] == "scaled_merge"]
    assert set(mine["attack_family"]) == {"rescaling"} and (mine["status"] == "ok").all()
    meta = json.loads((folder / "submission.json").read_text())
    assert (meta["kind"], meta["name"], meta["family"], meta["track"]) == ("attack", "scaled_merge", "rescaling", "merge")
    assert meta["config"] == {"others_weight": 1.0, "release_weight": 0.5} and len(meta["code_hash"]) == 10
    assert meta["class"] == f"ScaledMerge in {Path(filed['outside']).name}" and meta["breaks"] == []
    assert str(filed["outside"]) not in (folder / "submission.json").read_text(), "no local path is published"
    assert meta["valid_on_none"] is False and meta["valid"] is False
    readme = (folder / "README.md").read_text()
    assert readme.startswith("# Attack submission: scaled_merge")
    assert "| llama | full | sort | max | weak | expert gain" in readme
    assert "**Breaks no defense** of the preset." in readme
    assert "| merge_lock | llama | full | – | – | – (this run's other attacks) | weak on none | – | no |" in readme
    assert "no published run of preset 'micro-llama-full'" in readme
    assert "NOT VALID" in readme and "Weak on every input against `none`" in readme
