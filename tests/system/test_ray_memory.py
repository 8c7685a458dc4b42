"""Reliability (issue 8): a 300-cell grid through Ray with bounded memory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fault_plugins  # noqa: F401  (registers the fault plugins this module's runs name)
import pytest
from reliability_runs import (
    BIN,
    TESTS,
    TIMEOUT_S,
    check_ok,
    rel_data,
    run_args,
    run_cells,
    run_env,
    write_yaml,
    zoo_copy,
)

#: plumbing, not accuracy: scored by the double (tests/fakes), in-process and in subprocesses (reliability_runs.env)
pytestmark = pytest.mark.usefixtures("fake_scoring")


@contextlib.contextmanager
def _isolated_ray_home() -> Iterator[Path]:
    """Ray writes ~/.ray/auth_token and /tmp/ray/session_*: give the run its own HOME and temp dir, and
    check the real ~/.ray/auth_token is left as it was (it breaks clusters started by `ray start`)."""
    token = Path.home() / ".ray" / "auth_token"
    existed = token.exists()
    home = Path(tempfile.mkdtemp(prefix="lbrel-"))  # short: Ray's socket paths must fit in 107 bytes
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if not existed and token.exists():
            token.unlink()  # created by this run after all: remove it, then fail
            raise AssertionError(f"the Ray run created {token} despite its private HOME")


class _RssSampler:
    """Peak resident memory of a process and all its descendants (driver, raylet, GCS, workers)."""

    def __init__(self, pid: int, cells_dir: Path, total: int, interval: float = 0.2):
        import psutil

        self.process = psutil.Process(pid)
        self.cells_dir, self.total, self.interval = cells_dir, total, interval
        self.peak = 0
        self.peak_processes = 0
        self.by_third: dict[int, int] = {}  # total RSS when a third, two thirds, 95 % of the cells were done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        import psutil

        total, count = 0, 0
        with contextlib.suppress(psutil.Error):
            for process in [self.process, *self.process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
                    count += 1
        self.peak_processes = max(self.peak_processes, count)
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            current = self.sample()
            self.peak = max(self.peak, current)
            done = len(list(self.cells_dir.glob("[!.]*.json"))) if self.cells_dir.is_dir() else 0
            for third, fraction in ((1, 1 / 3), (2, 2 / 3), (3, 0.95)):  # 0.95: the end, before the exit
                if done >= fraction * self.total and third not in self.by_third:
                    self.by_third[third] = current
            time.sleep(self.interval)


RAY_CELLS = 300
#: Generous: a driver, Ray's daemons and two workers with torch, transformers and lm-eval loaded come to
#: about 2-3 GiB here; a per-cell leak of even 10 MB would add 3 GiB over 300 cells.
RAY_RSS_BOUND = 6 * 2**30
RAY_GROWTH_BOUND = 768 * 2**20


@pytest.mark.slow
def test_300_cells_through_ray_with_bounded_memory(micro_preset: Any, reference: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    # each attack runs on none and on its control: RAY_CELLS cells in all
    attacks = [{"name": "rel_fast", "config": {"k": k}, "label": f"fast{k}"} for k in range(RAY_CELLS // 2)]
    preset = write_yaml(rel_data(micro_preset, merge_attacks=attacks, finetune_attacks=[],
                                   release_formats=["full"]), tmp_path / "many.yaml")
    root, out = zoo_copy(reference[0], tmp_path / "root"), tmp_path / "run"
    with _isolated_ray_home() as home:
        ray_env = run_env(HOME=str(home), RAY_TMPDIR=str(home), RAY_USAGE_STATS_ENABLED="0")
        process = subprocess.Popen([str(BIN / "lockbench"), *run_args(preset, root, out, "--executor", "ray")],
                                   env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            with _RssSampler(process.pid, root / "cells", RAY_CELLS) as sampler:
                stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    check_ok(result, RAY_CELLS)
    frame = run_cells(out)
    assert len(frame) == RAY_CELLS and (frame["status"] == "ok").all()
    assert set(sampler.by_third) == {1, 2, 3}, "the sampler must see the run at a third, two thirds and the end"
    growth = sampler.by_third[3] - sampler.by_third[1]
    summary = {"peak_rss_mib": sampler.peak // 2**20, "processes": sampler.peak_processes,
               "rss_mib_at_thirds": {k: v // 2**20 for k, v in sorted(sampler.by_third.items())}}
    print(f"\n300-cell Ray run: {json.dumps(summary)}")
    (TESTS.parent / ".pytest_cache").mkdir(exist_ok=True)
    (TESTS.parent / ".pytest_cache" / "reliability-ray-rss.json").write_text(json.dumps(summary))
    assert sampler.peak_processes >= 4, "the sampler must see the driver, Ray's daemons and its workers"
    assert sampler.peak < RAY_RSS_BOUND, summary
    assert growth < RAY_GROWTH_BOUND, f"memory kept growing with the cells: {summary}"
