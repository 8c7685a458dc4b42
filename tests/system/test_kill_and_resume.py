"""Reliability (issue 8): a run SIGKILLed at five points resumes to the uninterrupted result, and an adapter
rebuilt alone matches the uninterrupted build."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import fault_plugins  # noqa: F401  (registers the fault plugins this module's runs name)
import pytest
from reliability_runs import (
    assert_same_results,
    check_ok,
    digests,
    hidden,
    run_args,
    run_cli,
    run_env,
    zoo_copy,
)

#: plumbing, not accuracy: scored by the double (tests/fakes), in-process and in subprocesses (reliability_runs.env)
pytestmark = pytest.mark.usefixtures("fake_scoring")


def _killed_during_zoo(root: Path, out: Path) -> None:
    entries = list((root / "zoo" / "base").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("."), "the trained base was still in scratch"
    assert (entries[0] / "model.safetensors").is_file()
    assert not (root / "zoo" / "experts").exists() and not (root / "releases").exists()


def _killed_in_defense(root: Path, out: Path) -> None:
    releases = root / "releases"
    assert len([p for p in releases.iterdir() if not p.name.startswith(".")]) == 1
    scratch = [p for p in releases.iterdir() if p.name.startswith(".")]
    assert len(scratch) == 1 and any((scratch[0] / "public").glob("*.safetensors")), scratch


def _killed_mid_cell(root: Path, out: Path) -> None:
    assert len(list((root / "cells").glob("[!.]*.json"))) == 1
    assert not out.joinpath("cells.csv").exists()


def _killed_writing_cell(root: Path, out: Path) -> None:
    assert len(list((root / "cells").glob("[!.]*.json"))) == 1
    partial = [p for p in (root / "cells").iterdir() if p.name.startswith(".")]
    assert len(partial) == 1, partial
    with pytest.raises(ValueError):
        json.loads(partial[0].read_text())  # really half a record


def _killed_writing_outputs(root: Path, out: Path) -> None:
    from bench.results import read_csv

    assert len(read_csv(out / "cells.csv", "cells")) == 6, "cells.csv was moved in whole"
    assert not (out / "README.md").exists(), "no README: the run directory is marked incomplete"
    assert not (out / "leaderboard.csv").exists()


KILL_POINTS: dict[str, tuple[str, bool, Callable[[Path, Path], None]]] = {
    # id: (LOCKBENCH_FAULT, start from an empty root, what the kill must have left)
    "zoo-build": ("publish:base", True, _killed_during_zoo),
    "defense-job": ("defense:saved@2", False, _killed_in_defense),
    "mid-cell": ("cell:attacked@2", False, _killed_mid_cell),
    "writing-cell-file": ("write-json:cells@2", False, _killed_writing_cell),
    "writing-csv": ("outputs:cells.csv", False, _killed_writing_outputs),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_rerun_gives_the_uninterrupted_result(point: str, rel_preset: Path,
                                                           reference: tuple[Path, Path], tmp_path: Path) -> None:
    fault, empty_root, check_killed_state = KILL_POINTS[point]
    reference_root, reference_run = reference
    root = tmp_path / "root" if empty_root else zoo_copy(reference_root, tmp_path / "root")
    out = tmp_path / "run"
    killed = run_cli(run_args(rel_preset, root, out), env=run_env(LOCKBENCH_FAULT=fault))
    assert killed.returncode == -signal.SIGKILL, f"not killed at {fault}:\n{killed.stdout}\n{killed.stderr[-3000:]}"
    check_killed_state(root, out)

    resumed = run_cli(run_args(rel_preset, root, out))
    check_ok(resumed, 6)
    assert_same_results(root, out, reference)
    assert digests(root, "zoo") == digests(reference_root, "zoo")
    assert (out / "README.md").is_file()
    assert not hidden(root), f"scratch or temporary files left: {hidden(root)}"
    assert not hidden(out), f"staging files left in the run directory: {hidden(out)}"


@pytest.mark.slow
def test_an_adapter_rebuilt_alone_matches_the_uninterrupted_build(rel_preset: Path, reference: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    from bench.presets import load_preset
    from bench.zoo.build import build_zoo

    root = zoo_copy(reference[0], tmp_path / "root")
    adapter = next((root / "zoo" / "lora").glob("llama-max-*"))
    shutil.rmtree(adapter)
    build_zoo(load_preset(str(rel_preset)).zoo, root)
    assert digests(root, "zoo") == digests(reference[0], "zoo")
