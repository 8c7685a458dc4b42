"""Running the CLI on the micro preset, for the harness tests (tests/integration/test_harness.py,
tests/system/test_harness_e2e.py): its environment (offline, scored by the double), the command, the exit it
must give, and comparing runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from fakes import FAKE_SCORER

from bench.harness.scoring import SCORER_ENV
from bench.results import TIMING_COLUMNS
from bench.runtime.offline import OFFLINE_ENV

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent
STAGE_DIRS = ("releases", "cells", "scores", "private")
CLI_TIMEOUT_S = 900


def cli_env() -> dict[str, str]:
    """The CLI's environment: offline, no inherited RAY_ADDRESS (the Ray test adds its own), and scored by
    the double (tests/fakes.FakeScorer): a hash of the weights, so comparing cells compares the models,
    where lm-eval scores micro's models 0 everywhere."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    path = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return {**env, **OFFLINE_ENV, SCORER_ENV: FAKE_SCORER, "PYTHONPATH": path}


def reset_stages(root: Path) -> None:
    """Delete every cached stage after the zoo, so the next run recomputes them."""
    for name in STAGE_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)


def cli_command(root: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "lockbench"), "run", "--preset", "micro", "--root", str(root), "--out", str(out), *extra]


def cli_run(root: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(root, out, *extra), env=env or cli_env(), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


def check_micro_exit(result: subprocess.CompletedProcess) -> None:
    """Micro exits 1 only for its expected VALIDITY lines, never for failed cells."""
    detail = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode in (0, 1), detail
    assert " 0 failed)" in result.stdout, detail
    if result.returncode == 1:
        assert "VALIDITY" in result.stderr, detail


def run_cells(run_dir: Path) -> pd.DataFrame:
    """cells.csv as text, without the timing columns (the only ones allowed to differ between runs)."""
    frame = pd.read_csv(run_dir / "cells.csv", dtype=str, keep_default_na=False)
    return frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])


def assert_same_cells(actual: Path, expected: Path) -> None:
    pd.testing.assert_frame_equal(run_cells(actual), run_cells(expected), check_exact=True)


def cell_files(root: Path) -> list[Path]:
    folder = root / "cells"
    return [p for p in folder.glob("*.json") if not p.name.startswith(".")] if folder.is_dir() else []


def hidden_entries(root: Path, *folders: str) -> list[Path]:
    return [p for name in folders if (root / name).is_dir() for p in (root / name).iterdir() if p.name.startswith(".")]
