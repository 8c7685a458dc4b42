"""End-to-end harness guarantees (DESIGN §2, §7) on the micro preset.

Micro's models are too small to score above 0, so these tests check plumbing: determinism, resuming
after SIGKILL, a two-node Ray cluster, the information boundary and failure isolation. Every test
shares one micro zoo (conftest's `micro_zoo`); stages after the zoo are content-addressed caches, so
a test that wants them recomputed deletes their folders (`_reset_stages`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from attacks.common import merge_release
from bench.harness.grid import GridConfig, PluginSpec
from bench.offline import OFFLINE_ENV
from bench.plugins import (
    Attack,
    AttackOutput,
    Defense,
    OwnerView,
    PublicView,
    Release,
    register_attack,
    register_defense,
)
from bench.presets import Preset
from bench.scoring import TIMING_COLUMNS
from bench.storage import _scratch_prefix, cached_directory, is_complete
from bench.zoo.build import Zoo

BIN = Path(sys.executable).parent
STAGE_DIRS = ("releases", "cells", "scores", "private")
CLI_TIMEOUT_S = 900
#: What the test defense keeps private; its float32 bytes are distinctive in any file.
SECRET = 1234.5678
SECRET_PATTERNS = (struct.pack("<f", SECRET), struct.pack("<d", SECRET), b"1234.5678", b"1234.567")


# ----------------------------------------------------------------------------- test plugins
# Registration is global and happens once, at import; the names cannot clash with real plugins.


@register_defense
class SecretKeeper(Defense):
    """Releases the unprotected model and keeps a marker-filled private mask, like PMP keeps its mask."""

    name = "secret_keeper"
    description = "test plugin: plain release plus a private mask full of a marker value"
    tracks = frozenset({"merge", "finetune"})

    def protect(self, owner: OwnerView) -> Release:
        return Release(owner.unprotected(), private={"mask": torch.full((8, 8), SECRET, dtype=torch.float32)})


@register_defense
class Exploder(Defense):
    """A defense that crashes: its cells must fail, the rest of the grid must not."""

    name = "exploder"
    description = "test plugin: raises in protect"
    tracks = frozenset({"merge"})

    def protect(self, owner: OwnerView) -> Release:
        raise RuntimeError("exploder refuses to protect anything")


@register_defense
class NanMaker(Defense):
    """A defense whose release has NaN weights: the harness must refuse to publish it."""

    name = "nan_maker"
    description = "test plugin: releases NaN weights"
    tracks = frozenset({"merge"})

    def protect(self, owner: OwnerView) -> Release:
        model = copy.deepcopy(owner.reference_release)
        assert model is not None
        with torch.no_grad():
            next(p for p in model.parameters() if p.is_floating_point()).fill_(math.nan)
        return Release(model)


class Snooper:
    """Searches everything reachable from an attacker's view for the defense's private material."""

    def __init__(self) -> None:
        self.findings: list[str] = []
        self.tensors = 0
        self.files = 0
        self.paths: set[Path] = set()
        self._seen: set[int] = set()

    def visit(self, value: Any, where: str) -> None:
        if isinstance(value, str):
            self.check_string(value, where)
            return
        if isinstance(value, bool | int | float | type(None) | Path):
            if isinstance(value, float) and math.isclose(value, SECRET, rel_tol=1e-6):
                self.findings.append(f"{where}: the secret value")
            elif isinstance(value, Path):
                self.check_string(str(value), where)
            return
        if id(value) in self._seen:
            return
        self._seen.add(id(value))
        if isinstance(value, torch.Tensor):
            self.check_tensor(value, where)
        elif isinstance(value, torch.nn.Module):
            self.visit_module(value, where)
        elif isinstance(value, PreTrainedTokenizerBase):
            self.visit(value.name_or_path, f"{where}.name_or_path")
            self.visit(value.init_kwargs, f"{where}.init_kwargs")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for item in dataclasses.fields(value):
                self.visit(getattr(value, item.name), f"{where}.{item.name}")
        elif isinstance(value, dict):
            for key, item in value.items():
                self.visit(key, f"{where}[key]")
                self.visit(item, f"{where}[{key!r}]")
        elif isinstance(value, list | tuple | set | frozenset):
            for index, item in enumerate(value):
                self.visit(item, f"{where}[{index}]")
        elif hasattr(value, "to_dict"):  # transformers' PretrainedConfig / GenerationConfig
            self.visit(value.to_dict(), f"{where}.to_dict()")

    def visit_module(self, module: torch.nn.Module, where: str) -> None:
        for name, tensor in module.state_dict().items():
            self.check_tensor(tensor, f"{where}.state_dict()[{name!r}]")
        for name, tensor in module.named_buffers():
            self.check_tensor(tensor, f"{where}.buffer {name}")
        for attribute in ("config", "peft_config", "generation_config", "name_or_path"):
            self.visit(getattr(module, attribute, None), f"{where}.{attribute}")

    def check_tensor(self, tensor: torch.Tensor, where: str) -> None:
        self.tensors += 1
        if tensor.is_floating_point() and torch.isclose(tensor.detach().float(), torch.tensor(SECRET)).any():
            self.findings.append(f"{where}: tensor holding the secret value")

    def check_string(self, value: str, where: str) -> None:
        if "private" in value.lower():
            self.findings.append(f"{where}: string mentions 'private': {value[:80]!r}")
        if os.path.isabs(value) and len(value) < 4096 and os.path.exists(value):
            path = Path(value)
            self.paths.add(path)
            if path.name == "public":  # the release's own folder (metrics.json lives beside public/)
                self.paths.add(path.parent)

    def scan_files(self) -> None:
        """Every file under every folder a reachable string names."""
        for root in sorted(self.paths):
            for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                self.scan_file(path)

    def scan_file(self, path: Path) -> None:
        self.files += 1
        if "private" in path.name.lower():
            self.findings.append(f"{path}: file named 'private'")
        data = path.read_bytes()
        if b"private" in data.lower():
            self.findings.append(f"{path}: contains the word 'private'")
        if any(pattern in data for pattern in SECRET_PATTERNS):
            self.findings.append(f"{path}: contains the secret value")


#: One entry per snoop run in this process (serial executor): what it searched and found.
SNOOP_RUNS: list[dict[str, Any]] = []


@register_attack
class Snoop(Attack):
    """Task arithmetic that first hunts for private defense material in everything it was given."""

    name = "snoop"
    description = "test plugin: searches the public view for private material, then merges"
    track = "merge"

    def run(self, view: PublicView) -> AttackOutput:
        snooper = Snooper()
        snooper.visit(view, "view")
        snooper.scan_files()
        SNOOP_RUNS.append({"findings": snooper.findings, "tensors": snooper.tensors, "files": snooper.files,
                           "release_format": view.release_format})
        merged = merge_release(view, "task_arithmetic", {"weight": 1.0, "normalize": False, "lambda": 1.0})
        knobs = {"method": "snoop", "found": snooper.findings, "searched_tensors": snooper.tensors,
                 "searched_files": snooper.files}
        return AttackOutput(models={1.0: merged}, knobs=knobs)


# ----------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    """The CLI's environment: offline, and no inherited RAY_ADDRESS (the Ray test adds its own)."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return {**env, **OFFLINE_ENV}


def _reset_stages(root: Path) -> None:
    """Delete every cached stage after the zoo, so the next run recomputes them."""
    for name in STAGE_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)


def _cli_command(root: Path, out: Path, *extra: str) -> list[str]:
    return [str(BIN / "lockbench"), "run", "--preset", "micro", "--root", str(root), "--out", str(out), *extra]


def _cli_run(root: Path, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_cli_command(root, out, *extra), env=env or _env(), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)


def _check_micro_exit(result: subprocess.CompletedProcess) -> None:
    """Micro exits 1 only for its expected VALIDITY lines, never for failed cells."""
    detail = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode in (0, 1), detail
    assert " 0 failed)" in result.stdout, detail
    if result.returncode == 1:
        assert "VALIDITY" in result.stderr, detail


def _cells(run_dir: Path) -> pd.DataFrame:
    """cells.csv as text, without the timing columns (the only ones allowed to differ between runs)."""
    frame = pd.read_csv(run_dir / "cells.csv", dtype=str, keep_default_na=False)
    return frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])


def _assert_same_cells(actual: Path, expected: Path) -> None:
    pd.testing.assert_frame_equal(_cells(actual), _cells(expected), check_exact=True)


def _cell_files(root: Path) -> list[Path]:
    folder = root / "cells"
    return [p for p in folder.glob("*.json") if not p.name.startswith(".")] if folder.is_dir() else []


def _hidden_entries(root: Path, *folders: str) -> list[Path]:
    return [p for name in folders if (root / name).is_dir() for p in (root / name).iterdir() if p.name.startswith(".")]


def _write_preset(preset: Preset, path: Path) -> Path:
    path.write_text(yaml.safe_dump(preset.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def micro_root(micro_zoo: Zoo) -> Path:
    """The storage root holding the micro zoo, built once per session."""
    return Path(micro_zoo.root)


@pytest.fixture(scope="session")
def serial_run(micro_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: an uninterrupted serial CLI run with every stage after the zoo computed fresh."""
    _reset_stages(micro_root)
    out = tmp_path_factory.mktemp("run-serial")
    _check_micro_exit(_cli_run(micro_root, out))
    return out


# ----------------------------------------------------------------------------- storage (fast)


def test_killed_atomic_directory_is_cleaned_and_not_mistaken_for_a_result(tmp_path: Path) -> None:
    """A SIGKILL skips `finally`: the scratch copy stays behind, must not count as the artefact, and the
    next build of the same target must remove it (scratch of live builders is left alone)."""
    target = tmp_path / "releases" / "model-abc"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from bench.storage import atomic_directory
        with atomic_directory(Path({str(target)!r})) as scratch:
            (scratch / "weights").write_text("partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = _hidden_entries(tmp_path, "releases")
    assert len(leftovers) == 1 and (leftovers[0] / "weights").read_text() == "partial"
    assert not target.exists() and not is_complete(target)

    live = Path(tempfile.mkdtemp(prefix=_scratch_prefix(target), dir=target.parent))  # "another worker"
    built = cached_directory(target, lambda scratch: (scratch / "weights").write_text("complete"))
    assert built == target and is_complete(target)
    assert (target / "weights").read_text() == "complete"
    assert _hidden_entries(tmp_path, "releases") == [live]


# ----------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_rerun_from_scratch_is_deterministic(micro_root: Path, serial_run: Path, tmp_path: Path) -> None:
    """Same zoo, every later stage recomputed: identical cells apart from wall-clock columns."""
    _reset_stages(micro_root)
    _check_micro_exit(_cli_run(micro_root, tmp_path))
    _assert_same_cells(tmp_path, serial_run)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_result(micro_root: Path, serial_run: Path, tmp_path: Path) -> None:
    """Kill the whole process group mid-grid; the re-run reuses finished cells and matches the reference."""
    total = len(_cells(serial_run))
    assert total >= 3, "micro needs at least 3 cells for a kill between 2 and all of them"
    _reset_stages(micro_root)
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(_cli_command(micro_root, tmp_path / "killed"), env=_env(), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + CLI_TIMEOUT_S
            while process.poll() is None and len(_cell_files(micro_root)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = (tmp_path / "killed.log").read_text()[-3000:]
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{output}"
    done = len(_cell_files(micro_root))
    assert 2 <= done < total, f"killed with {done} of {total} cells written"
    killed_leftovers = _hidden_entries(micro_root, "releases", "private")

    result = _cli_run(micro_root, tmp_path / "resumed")
    _check_micro_exit(result)
    assert f"{total} cells ({done} cached, 0 failed)" in result.stdout, result.stdout
    _assert_same_cells(tmp_path / "resumed", serial_run)
    remaining = _hidden_entries(micro_root, "releases", "private")
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
def _two_node_ray(env: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """A head and a worker node on loopback, one CPU each; yields (address, Ray temp dir)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lbray-"))  # short: Ray's socket paths must fit in 107 bytes
    port, pgids = _free_port(), []

    def start(*args: str) -> None:
        process = subprocess.Popen([str(BIN / "ray"), "start", *args, "--num-cpus=1", "--disable-usage-stats",
                                    "--object-store-memory=200000000"], cwd=temp_dir, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        pgids.append(process.pid)  # the daemons it spawns keep this process group
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, f"`ray start {' '.join(args)}` failed:\n{output[-4000:]}"

    try:
        start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}")
        start(f"--address=127.0.0.1:{port}")
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
    _reset_stages(micro_root)
    # Ray keeps an auth token under ~/.ray that a local `ray.init` elsewhere may have written; a private
    # HOME keeps this cluster's token state its own, whatever ran on the machine before.
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in _env().items() if not key.startswith("RAY_AUTH")}
    env["HOME"] = str(home)
    with _two_node_ray(env) as (address, temp_dir):
        result = _cli_run(micro_root, tmp_path, "--executor", "ray", env={**env, "RAY_ADDRESS": address})
        nodes = _nodes_that_ran_tasks(temp_dir)
    _check_micro_exit(result)
    _assert_same_cells(tmp_path, serial_run)
    assert len(nodes) == 2, f"work ran on {len(nodes)} node(s), expected both: {nodes}"


def _micro_with_grid(micro_preset: Preset, **grid: Any) -> Preset:
    """Micro's zoo with a small merge-only grid (one model, one protected task, seed 0)."""
    defaults: dict[str, Any] = {"models": ["llama"], "protected_tasks": ["sort"], "seeds": [0], "finetune_attacks": []}
    return micro_preset.model_copy(update={"grid": GridConfig(**{**defaults, **grid})})


@pytest.mark.slow
def test_attacks_cannot_reach_private_material(micro_root: Path, micro_preset: Preset, tmp_path: Path) -> None:
    """DESIGN §2: the private mask is stored, and nothing an attack is handed leads to it."""
    from bench.harness.run import run_benchmark

    _reset_stages(micro_root)
    SNOOP_RUNS.clear()
    preset = _micro_with_grid(micro_preset,
                              defenses=[PluginSpec(name="none"), PluginSpec(name="secret_keeper")],
                              merge_attacks=[PluginSpec(name="snoop"), PluginSpec(name="task_arithmetic")])
    summary = run_benchmark(preset, micro_root, tmp_path / "run")
    assert summary.failed == 0

    private = sorted((micro_root / "private").glob("secret_keeper-*/private.safetensors"))
    assert len(private) == 2, private  # adapter and full release of llama/sort
    for path in private:
        assert torch.equal(load_file(str(path))["mask"], torch.full((8, 8), SECRET))
    assert not list((micro_root / "private").glob("none-*")), "`none` has no private material"

    # The detector works: pointed at the private file itself, it finds the secret.
    control = Snooper()
    control.scan_file(private[0])
    control.check_tensor(torch.full((2,), SECRET), "control")
    assert len(control.findings) == 3, control.findings

    assert len(SNOOP_RUNS) == 4, "snoop ran against none and secret_keeper, adapter and full"
    for run in SNOOP_RUNS:
        assert run["findings"] == [], run["findings"]
        assert run["tensors"] > 0 and run["files"] > 0, run
    public = Snooper()
    for folder in (micro_root / "releases").glob("secret_keeper-*"):
        for path in folder.rglob("*"):
            if path.is_file():
                public.scan_file(path)
    assert public.files > 0 and public.findings == [], public.findings


@pytest.mark.slow
def test_failing_defenses_fail_only_their_cells(micro_root: Path, micro_preset: Preset, tmp_path: Path) -> None:
    """A crashing defense and one releasing NaNs fail their own cells with a reason; `none` still runs,
    failed cells are not cached (a re-run retries them), and the CLI exits non-zero."""
    from typer.testing import CliRunner

    from bench.cli import app

    _reset_stages(micro_root)
    preset = _micro_with_grid(
        micro_preset, merge_attacks=[PluginSpec(name="task_arithmetic")],
        defenses=[PluginSpec(name="none"), PluginSpec(name="exploder"), PluginSpec(name="nan_maker")])
    path = _write_preset(preset, tmp_path / "failing.yaml")
    result = CliRunner().invoke(app, ["run", "--preset", str(path), "--root", str(micro_root),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code != 0, result.output
    assert "6 cells (0 cached, 4 failed)" in result.output, result.output

    cells = pd.read_csv(tmp_path / "run" / "cells.csv", dtype=str, keep_default_na=False)
    by_defense = {name: group for name, group in cells.groupby("defense")}
    assert set(by_defense) == {"none", "exploder", "nan_maker"}
    assert (by_defense["none"]["status"] == "ok").all()
    assert len(by_defense["none"]) == 2
    exploded = by_defense["exploder"]
    assert (exploded["status"] == "failed").all()
    assert exploded["error"].str.contains("RuntimeError: exploder refuses to protect anything").all()
    poisoned = by_defense["nan_maker"]
    assert (poisoned["status"] == "failed").all()
    assert poisoned["error"].str.contains("non-finite weights").all(), poisoned["error"].tolist()
    assert len(_cell_files(micro_root)) == 2, "only the ok cells are cached"
