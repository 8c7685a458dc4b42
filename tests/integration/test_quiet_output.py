"""Quiet output: a run outside any git checkout prints no `fatal:` line (lm-eval's git probe), and library
warnings go to the run directory's log, not the terminal."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bench.runtime.offline import OFFLINE_ENV
from bench.runtime.runlog import LOG_FILE, library_output
from bench.zoo.build import Zoo

BIN = Path(sys.executable).parent


def _outside_any_checkout(folder: Path) -> bool:
    probe = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=folder, capture_output=True, text=True)
    return probe.returncode != 0 and "not a git repository" in probe.stderr


@pytest.mark.skipif(shutil.which("git") is None, reason="without git, lm-eval's probe prints nothing anyway")
def test_a_micro_run_outside_a_git_checkout_prints_no_fatal_line(micro_zoo: Zoo, tmp_path: Path) -> None:
    """Every cell is computed (a fresh storage root holding only the zoo), so lm-eval evaluates each one."""
    assert _outside_any_checkout(tmp_path), "the test needs a working directory outside any git checkout"
    root = tmp_path / "root"
    shutil.copytree(Path(micro_zoo.root) / "zoo", root / "zoo")
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "PYTHONPATH")}
    result = subprocess.run([str(BIN / "lockbench"), "run", "--preset", "micro", "--no-strict", "--root", str(root),
                             "--out", str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env={**env, **OFFLINE_ENV})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "20 cells (0 cached, 0 failed)" in result.stdout, "every cell was evaluated in this run"
    assert [line for line in result.stderr.splitlines() if "fatal:" in line] == []
    assert "VALIDITY (not enforced: --no-strict)" in result.stderr


def test_library_warnings_go_to_the_run_log_once_the_folder_exists(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    # whatever verbosity an earlier test in this process left the libraries at (bench.zoo and lm-eval's own
    # simple_evaluate set theirs): the
    # test is about where a warning goes once emitted
    for name in ("transformers", "transformers.modeling_utils", "lm_eval", "lm_eval.evaluator"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET if "." in name else logging.WARNING)
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    before = [(logger.handlers[:], logger.propagate) for logger in map(logging.getLogger, ("transformers", "lm_eval"))]
    with library_output(run_dir):
        logging.getLogger("transformers.modeling_utils").warning("a library warning")
        warnings.warn("a python warning", UserWarning, stacklevel=1)
        assert not run_dir.exists(), "nothing is written before the run directory is created"
        run_dir.mkdir()
        logging.getLogger("lm_eval.evaluator").warning("after the folder exists")
    log = (run_dir / LOG_FILE).read_text()
    assert "[transformers.modeling_utils] a library warning" in log
    assert "a python warning" in log and "after the folder exists" in log
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "warning" not in captured.out
    after = [(logger.handlers[:], logger.propagate) for logger in map(logging.getLogger, ("transformers", "lm_eval"))]
    assert after == before, "the loggers are restored after the run"


def test_a_library_that_installs_its_own_terminal_handler_is_sent_back_to_the_run_log(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Ray adds a terminal handler to its logger at `import ray` (after `library_output` set the handlers);
    `start_ray` reclaims the logger, so Ray's start-up notes (the token-authentication warning) reach the
    run's log, not the terminal."""
    import io

    from bench.runtime.runlog import reclaim

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    terminal = io.StringIO()
    logger = logging.getLogger("lockbench_test_library")
    with library_output(run_dir):
        logger.handlers = [logging.StreamHandler(terminal)]  # what the library does when it is imported
        reclaim("lockbench_test_library")
        logger.warning("token authentication is enabled")
    assert terminal.getvalue() == ""
    assert "token authentication is enabled" in (run_dir / LOG_FILE).read_text()
    logger.handlers = [logging.StreamHandler(terminal)]
    reclaim("lockbench_test_library")  # outside any block: the logger is left as it is
    logger.warning("outside the run")
    assert "outside the run" in terminal.getvalue()
    logger.handlers = []


@pytest.mark.slow
def test_rays_start_up_notes_go_to_the_run_log(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`ray.init` replaces the handlers of Ray's logger (it clears them, or re-formats them): started inside
    `library_output`, Ray's notes (the token-authentication warning among them) reach the run's log in its
    format, and nothing of Ray's reaches the terminal."""
    from bench.harness.cluster import start_ray, stop_local_ray
    from bench.runtime.runlog import RunLogHandler

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with library_output(run_dir):
        start_ray(num_cpus=1)
        try:
            handlers = logging.getLogger("ray").handlers
            assert len(handlers) == 1 and isinstance(handlers[0], RunLogHandler), handlers
            logging.getLogger("ray.lockbench_test").warning("a note from Ray")
        finally:
            stop_local_ray()
    assert "WARNING [ray.lockbench_test] a note from Ray" in (run_dir / LOG_FILE).read_text()
    err = capfd.readouterr().err
    assert "Token authentication" not in err and "a note from Ray" not in err, err[-2000:]
