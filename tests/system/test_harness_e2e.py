"""End-to-end harness guarantees through the CLI on the micro preset (split from tests/integration/test_harness.py):
a re-run from scratch is deterministic, a SIGKILLed run resumes to the same result, a two-node Ray cluster
gives the serial numbers, and a node that cannot see the storage root fails the run in one line."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness_runs import (
    BIN,
    CLI_TIMEOUT_S,
    assert_same_cells,
    cell_files,
    check_micro_exit,
    cli_command,
    cli_env,
    cli_run,
    hidden_entries,
    reset_stages,
    run_cells,
)


@pytest.mark.slow
def test_rerun_from_scratch_is_deterministic(micro_root: Path, serial_run: Path, tmp_path: Path) -> None:
    """Same zoo, every later stage recomputed: identical cells apart from wall-clock columns."""
    reset_stages(micro_root)
    check_micro_exit(cli_run(micro_root, tmp_path))
    assert_same_cells(tmp_path, serial_run)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_result(micro_root: Path, serial_run: Path, tmp_path: Path) -> None:
    """Kill the whole process group mid-grid; the re-run reuses finished cells and matches the reference."""
    total = len(run_cells(serial_run))
    assert total >= 3, "micro needs at least 3 cells for a kill between 2 and all of them"
    reset_stages(micro_root)
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(cli_command(micro_root, tmp_path / "killed"), env=cli_env(), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + CLI_TIMEOUT_S
            while process.poll() is None and len(cell_files(micro_root)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = (tmp_path / "killed.log").read_text()[-3000:]
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{output}"
    done = len(cell_files(micro_root))
    assert 2 <= done < total, f"killed with {done} of {total} cells written"
    killed_leftovers = hidden_entries(micro_root, "releases", "private")

    result = cli_run(micro_root, tmp_path / "resumed")
    check_micro_exit(result)
    assert f"{total} cells ({done} cached, 0 failed)" in result.stdout, result.stdout
    assert_same_cells(tmp_path / "resumed", serial_run)
    remaining = hidden_entries(micro_root, "releases", "private")
    assert not remaining, f"scratch left under releases/ or private/ (after the kill: {killed_leftovers})"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line names `marker` (our Ray temp dir), from /proc."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "cmdline").read_bytes() and int(entry.name) != os.getpid():
                pids.append(int(entry.name))
    return pids


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_ray(pgids: list[int], temp_dir: Path) -> None:
    """Stop only the Ray daemons this test started (their process groups, then stragglers naming our temp dir).

    Not `ray stop --force`: that kills every Ray process on the machine, whoever started it.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_group_alive(pgid) for pgid in pgids):
            time.sleep(0.2)
    for pid in _pids_mentioning(str(temp_dir)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _two_node_ray(env: dict[str, str], worker_env: dict[str, str] | None = None) -> Iterator[tuple[str, Path]]:
    """A head and a worker node on loopback, one CPU each (the worker started with `worker_env` when given);
    yields (address, Ray temp dir)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lbray-"))  # short: Ray's socket paths must fit in 107 bytes
    port, pgids = _free_port(), []

    def start(*args: str, node_env: dict[str, str] = env) -> None:
        process = subprocess.Popen([str(BIN / "ray"), "start", *args, "--num-cpus=1", "--disable-usage-stats",
                                    "--object-store-memory=200000000"], cwd=temp_dir, env=node_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        pgids.append(process.pid)  # the daemons it spawns keep this process group
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, f"`ray start {' '.join(args)}` failed:\n{output[-4000:]}"

    try:
        start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}")
        start(f"--address=127.0.0.1:{port}", node_env=worker_env or env)
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        _stop_ray(pgids, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _nodes_that_ran_tasks(temp_dir: Path) -> set[str]:
    """Node ids of the Ray workers leased to a job (not the idle pre-started pool), from the session logs."""
    logs = temp_dir / "session_latest" / "logs"
    nodes = set()
    for err in logs.glob("worker-*-*-*.err"):
        worker_id, job_id, pid = err.stem.split("-")[1:4]
        if job_id == "ffffffff":
            continue
        core_log = logs / f"python-core-worker-{worker_id}_{pid}.log"
        match = re.search(r"node_id=([0-9a-f]+)", core_log.read_text(errors="replace")) if core_log.is_file() else None
        if match:
            nodes.add(match.group(1))
    return nodes


@pytest.mark.slow
def test_two_node_ray_cluster_matches_serial(micro_root: Path, serial_run: Path, tmp_path: Path) -> None:
    """`--executor ray` joining a real (two-raylet) cluster through RAY_ADDRESS gives the serial cells."""
    reset_stages(micro_root)
    # Ray keeps an auth token under ~/.ray that a local `ray.init` elsewhere may have written; a private
    # HOME keeps this cluster's token state its own, whatever ran on the machine before.
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in cli_env().items() if not key.startswith("RAY_AUTH")}
    env["HOME"] = str(home)
    with _two_node_ray(env) as (address, temp_dir):
        result = cli_run(micro_root, tmp_path, "--executor", "ray", env={**env, "RAY_ADDRESS": address})
        nodes = _nodes_that_ran_tasks(temp_dir)
    check_micro_exit(result)
    assert_same_cells(tmp_path, serial_run)
    assert len(nodes) == 2, f"work ran on {len(nodes)} node(s), expected both: {nodes}"


@pytest.mark.slow
def test_a_node_that_cannot_see_the_storage_root_fails_the_run_in_one_line(micro_root: Path, tmp_path: Path) -> None:
    """The root probe (bench.harness.cluster): a worker node started with another LOCKBENCH_HOME is named,
    with the root, before any release or cell runs."""
    reset_stages(micro_root)
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in cli_env().items() if not key.startswith("RAY_AUTH") and key != "LOCKBENCH_HOME"}
    env["HOME"] = str(home)
    elsewhere = tmp_path / "elsewhere"
    with _two_node_ray(env, worker_env={**env, "LOCKBENCH_HOME": str(elsewhere)}) as (address, _):
        result = cli_run(micro_root, tmp_path, "--executor", "ray", env={**env, "RAY_ADDRESS": address})
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr[-2000:]
    assert "Ray node" in error_lines[0] and str(micro_root.resolve()) in error_lines[0]
    assert str(elsewhere) in error_lines[0]
    assert not (micro_root / "releases").exists() or not any((micro_root / "releases").iterdir())
    assert not list(micro_root.glob(".lockbench-probe-*"))  # the probe file is removed again


def test_the_root_probe_reads_the_file_and_compares_the_nodes_lockbench_home(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.harness.cluster import read_probe

    probe = tmp_path / "probe"
    probe.write_text("token")
    monkeypatch.delenv("LOCKBENCH_HOME", raising=False)
    assert read_probe(str(probe), "token", None) == ""
    assert "another run's token" in read_probe(str(probe), "other", None)
    assert "cannot read the probe file" in read_probe(str(tmp_path / "missing"), "token", None)
    monkeypatch.setenv("LOCKBENCH_HOME", "/somewhere/else")
    assert "/somewhere/else" in read_probe(str(probe), "token", None)


