"""End-to-end harness guarantees (DESIGN §2, §7) on the micro preset.

Micro's models are too small to score above 0, so these tests check plumbing: determinism, resuming
after SIGKILL, a two-node Ray cluster, the information boundary and failure isolation. CLI runs score
with the double (tests/fakes.FakeScorer); the in-process boundary and failure tests keep lm-eval. Every test
shares one micro zoo (conftest's `micro_zoo`); stages after the zoo are content-addressed caches, so
a test that wants them recomputed deletes their folders (`_reset_stages`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import shutil
import signal
import socket
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
from fakes import FAKE_SCORER
from safetensors.torch import load_file
from snooper import BOUNDARY, SECRET, Snooper

from attacks.common import merge_release
from bench.harness.grid import GridConfig, PluginSpec
from bench.harness.scoring import SCORER_ENV
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
from bench.results import TIMING_COLUMNS
from bench.storage import _scratch_prefix, cached_directory, is_complete
from bench.zoo.build import Zoo

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent
STAGE_DIRS = ("releases", "cells", "scores", "private")
CLI_TIMEOUT_S = 900
#: What the test defense keeps private; its float32 bytes are distinctive in any file.


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


#: Canaries planted by the boundary test (fresh per process): a row appended to the test and owner_train
#: splits' JSONL, and a key name and value in the private material of `canary_keeper`.
CANARY_TEST = f"cnry{os.urandom(6).hex()}"
CANARY_PRIVATE_KEY = f"canary_{os.urandom(6).hex()}"
CANARY_PRIVATE_VALUE = f"cnryval{os.urandom(6).hex()}"
@register_defense
class CanaryKeeper(SecretKeeper):
    """SecretKeeper whose private material also holds a canary key name and a canary byte string."""

    name = "canary_keeper"
    description = "test plugin: plain release plus private material holding a marker value and canaries"

    def protect(self, owner: OwnerView) -> Release:
        release = super().protect(owner)
        release.private[CANARY_PRIVATE_KEY] = torch.tensor(list(CANARY_PRIVATE_VALUE.encode()), dtype=torch.uint8)
        return release


SNOOP_RUNS: list[dict[str, Any]] = []


@register_attack
class Snoop(Attack):
    """Task arithmetic that first hunts for private defense material in everything it was given."""

    name = "snoop"
    description = "test plugin: searches the public view for private material, then merges"
    track = "merge"
    family = "pinned"

    def run(self, view: PublicView) -> AttackOutput:
        snooper = Snooper()
        snooper.visit(view, "view")
        snooper.scan_files()
        SNOOP_RUNS.append({"findings": snooper.findings, "tensors": snooper.tensors, "files": snooper.files,
                           "objects": snooper.objects, "release_format": view.release_format})
        merged = merge_release(view, "task_arithmetic", {"weight": 1.0, "normalize": False, "lambda": 1.0})
        knobs = {"method": "snoop", "found": snooper.findings, "searched_tensors": snooper.tensors,
                 "searched_files": snooper.files}
        return AttackOutput(models={1.0: merged}, knobs=knobs)


# ----------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    """The CLI's environment: offline, no inherited RAY_ADDRESS (the Ray test adds its own), and scored by
    the double (tests/fakes.FakeScorer): a hash of the weights, so comparing cells compares the models,
    where lm-eval scores micro's models 0 everywhere."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    path = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return {**env, **OFFLINE_ENV, SCORER_ENV: FAKE_SCORER, "PYTHONPATH": path}


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


@pytest.mark.slow
def test_a_node_that_cannot_see_the_storage_root_fails_the_run_in_one_line(micro_root: Path, tmp_path: Path) -> None:
    """The root probe (bench.harness.cluster): a worker node started with another LOCKBENCH_HOME is named,
    with the root, before any release or cell runs."""
    _reset_stages(micro_root)
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in _env().items() if not key.startswith("RAY_AUTH") and key != "LOCKBENCH_HOME"}
    env["HOME"] = str(home)
    elsewhere = tmp_path / "elsewhere"
    with _two_node_ray(env, worker_env={**env, "LOCKBENCH_HOME": str(elsewhere)}) as (address, _):
        result = _cli_run(micro_root, tmp_path, "--executor", "ray", env={**env, "RAY_ADDRESS": address})
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


def _micro_with_grid(micro_preset: Preset, **grid: Any) -> Preset:
    """Micro's zoo with a small merge-only grid (one model, one protected task, seed 0)."""
    defaults: dict[str, Any] = {"models": ["llama"], "protected_tasks": ["sort"], "seeds": [0], "finetune_attacks": []}
    return micro_preset.model_copy(update={"grid": GridConfig(**{**defaults, **grid})})


@pytest.mark.slow
def test_attacks_cannot_reach_private_material(micro_root: Path, micro_preset: Preset, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN §2: the private material is stored, the test split holds a planted canary row, and nothing
    an attack is handed (walked attribute by attribute, see `Snooper`) leads to either."""
    import functools
    import json

    import bench.harness.context as context
    from bench.leaderboard import run_and_write

    canaries = {"test split": CANARY_TEST, "private key name": CANARY_PRIVATE_KEY,
                "private key value": CANARY_PRIVATE_VALUE}
    planted: dict[Path, bytes] = {}  # split file -> its bytes before the canary row
    materialize = context.materialize
    row = json.dumps({"prompt": f"sort {CANARY_TEST}=", "answer": CANARY_TEST}).encode() + b"\n"

    def materialize_and_plant(*args: Any, **kwargs: Any):
        """The harness's materialize, then a canary row appended to every test and owner_train split file
        (after it, because materialize rewrites a split file whose bytes differ)."""
        tasks = materialize(*args, **kwargs)
        for task in tasks.tasks:
            for split in ("test", "owner_train"):
                path = tasks.split_path(task, split)
                data = path.read_bytes()
                if CANARY_TEST.encode() not in data:
                    planted.setdefault(path, data)
                    path.write_bytes(data + row)
        return tasks

    _reset_stages(micro_root)
    SNOOP_RUNS.clear()
    monkeypatch.setattr(context, "materialize", materialize_and_plant)
    monkeypatch.setitem(BOUNDARY, "root", micro_root.resolve())
    monkeypatch.setitem(BOUNDARY, "canaries", canaries)
    preset = _micro_with_grid(micro_preset,
                              defenses=[PluginSpec(name="none"), PluginSpec(name="canary_keeper")],
                              merge_attacks=[PluginSpec(name="snoop"), PluginSpec(name="task_arithmetic")])
    try:
        summary = run_and_write(preset, micro_root, tmp_path / "run")
        assert summary.failed == 0
        assert planted, "no split file was planted"
        for path in planted:  # still planted after the run, so while every attack ran
            assert CANARY_TEST.encode() in path.read_bytes(), path

        private = sorted((micro_root / "private").glob("canary_keeper-*/private.safetensors"))
        assert len(private) == 2, private  # adapter and full release of llama/sort
        for path in private:
            material = load_file(str(path))
            assert torch.equal(material["mask"], torch.full((8, 8), SECRET))
            assert bytes(material[CANARY_PRIVATE_KEY].tolist()) == CANARY_PRIVATE_VALUE.encode()
        assert not list((micro_root / "private").glob("none-*")), "`none` has no private material"

        # The detector works: pointed at the private file, a test split, a path under private/ or material
        # hidden behind a closure inside a partial, it reports each.
        control = Snooper()
        control.scan_file(private[0])
        control.check_tensor(torch.full((2,), SECRET), "control")
        found = "\n".join(control.findings)
        for expected in ("under the storage root's private/", "secret value", "tensor holding the secret",
                         "private key name canary", "private key value canary"):
            assert expected in found, (expected, control.findings)
        split = Snooper()
        split.scan_file(next(iter(planted)))
        assert any("test split canary" in f for f in split.findings), split.findings
        assert any("the test split's file" in f for f in split.findings), split.findings
        hidden = Snooper()
        tasks = context.get_context(preset, micro_root).tasks
        holder = type("Holder", (), {})()
        holder.score = functools.partial((lambda: tasks).__call__)  # a closure, on purpose
        hidden.visit(holder, "holder")
        hidden.scan_files()
        assert any("points at the test split's file" in f for f in hidden.findings), hidden.findings
        assert any("holds the test split canary" in f for f in hidden.findings), hidden.findings

        for run in SNOOP_RUNS:
            assert run["findings"] == [], "\n".join([f"{len(run['findings'])} findings:", *run["findings"][:30]])
            assert run["tensors"] > 0 and run["files"] > 0 and run["objects"] > 500, run
        # none, canary_keeper and the release-free control (DESIGN §5), adapter and full each
        assert len(SNOOP_RUNS) == 6, [run["release_format"] for run in SNOOP_RUNS]
        public = Snooper()
        for folder in (micro_root / "releases").glob("canary_keeper-*"):
            for path in folder.rglob("*"):
                if path.is_file():
                    public.scan_file(path)
        assert public.files > 0 and public.findings == [], public.findings
    finally:
        for path, data in planted.items():
            path.write_bytes(data)
        context.clear_contexts()
        _reset_stages(micro_root)  # its scores saw the canary row: no later test may reuse them


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
    assert "8 cells (0 cached, 4 failed)" in result.output, result.output  # 6 cells and the 2 controls

    cells = pd.read_csv(tmp_path / "run" / "cells.csv", dtype=str, keep_default_na=False)
    by_defense = {name: group for name, group in cells.groupby("defense")}
    assert set(by_defense) == {"none", "exploder", "nan_maker", "control"}
    assert (by_defense["control"]["status"] == "ok").all()
    assert (by_defense["none"]["status"] == "ok").all()
    assert len(by_defense["none"]) == 2
    exploded = by_defense["exploder"]
    assert (exploded["status"] == "failed").all()
    assert exploded["error"].str.contains("RuntimeError: exploder refuses to protect anything").all()
    poisoned = by_defense["nan_maker"]
    assert (poisoned["status"] == "failed").all()
    assert poisoned["error"].str.contains("non-finite weights").all(), poisoned["error"].tolist()
    assert len(_cell_files(micro_root)) == 4, "only the ok cells are cached (none's 2 and their 2 controls)"


def test_derived_numbers_recompute_by_hand_from_the_csv(serial_run: Path) -> None:
    """Every derived number of a real run's cells.csv follows from the README's formulas, recomputed here
    with pandas from the CSV alone (the matching control row and `none`'s release looked up by hand)."""
    import json

    frame = pd.read_csv(serial_run / "cells.csv")
    assert set(frame["defense"]) >= {"none", "control"}
    ok = frame[frame["status"] == "ok"]
    key = ["track", "model", "release_format", "task", "members", "attack_key", "seed"]
    release_key = ["track", "model", "release_format", "task", "seed"]
    none = ok[ok["defense"] == "none"].drop_duplicates(release_key).set_index(release_key)
    control = ok[ok["defense"] == "control"].set_index(key)
    checked = 0
    for _, row in ok.iterrows():
        ref, ctl = none.loc[tuple(row[k] for k in release_key)], control.loc[tuple(row[k] for k in key)]
        assert row["utility_retention"] == pytest.approx(row["utility"] / ref["utility"], nan_ok=True) \
            or ref["utility"] <= 0
        if row["track"] == "merge":
            assert row["control_acc"] == pytest.approx(ctl["merged_acc"])
            denominator = ref["utility"] - row["base_acc"]  # the unprotected expert's gain: a fixed reference
            kept_p = (row["merged_acc"] - ctl["merged_acc"]) / denominator if denominator > 0 else math.nan
            assert row["kept_protected"] == pytest.approx(kept_p, nan_ok=True)
            merged, base = json.loads(row["merged_acc_by_member"]), json.loads(row["base_acc_by_member"])
            experts = json.loads(row["expert_acc_by_member"])
            kept = [(merged[m] - base[m]) / (experts[m] - base[m]) for m in merged if experts[m] - base[m] > 0]
            kept_m = sum(kept) / len(kept) if kept and len(kept) == len(merged) else math.nan
            assert row["kept_members"] == pytest.approx(kept_m, nan_ok=True)
            pairs = [(row["merged_acc"], ref["utility"])] + [(merged[m], experts[m]) for m in merged]
            normalised = (sum(a / e for a, e in pairs) / len(pairs) if all(e > 0 for _, e in pairs)
                          else math.nan)  # an expert at 0 has no gain to normalise by
            assert row["paper_normalised_acc"] == pytest.approx(normalised, nan_ok=True)
            value = kept_p if math.isnan(kept_p) or math.isnan(kept_m) else min(kept_p, kept_m)
            assert row["joint_kept"] == pytest.approx(value, nan_ok=True)
            val, val_base = json.loads(row["val_acc_by_task"]), json.loads(row["val_base_by_task"])
            standalone = json.loads(row["val_standalone_by_task"])
            shares = {t: (val[t] - val_base[t]) / (standalone[t] - val_base[t]) if standalone[t] - val_base[t] > 0
                      else math.nan for t in val}
            # T_p's share on attacker_val is over the release-free control's, as kept_protected on test
            task, control_val = row["task"], json.loads(ctl["val_acc_by_task"])
            gain = standalone[task] - val_base[task]
            shares[task] = (val[task] - control_val[task]) / gain if gain > 0 else math.nan
            others = [shares[m] for m in merged]
            objective = (shares[row["task"]] if math.isnan(shares[row["task"]]) or any(map(math.isnan, others))
                         else min(shares[row["task"]], sum(others) / len(others)))
            assert row["val_objective"] == pytest.approx(objective, nan_ok=True)
        else:
            def curve(r: pd.Series, scratch: pd.Series) -> list[float]:
                return [r["acc_before"] - scratch["acc_before"], r["acc_b0125"] - scratch["acc_b0125"],
                        r["acc_b025"] - scratch["acc_b025"], r["acc_b05"] - scratch["acc_b05"],
                        r["acc_after"] - scratch["acc_after"]]

            weights = [0.0625, 0.125, 0.1875, 0.375, 0.25]
            area = sum(w * a for w, a in zip(weights, curve(row, ctl), strict=True))
            assert row["acc_after_scratch"] == pytest.approx(ctl["acc_after"])
            assert row["advantage"] == pytest.approx(row["acc_after"] - ctl["acc_after"])
            assert row["advantage_auc"] == pytest.approx(area)
            value = area
            assert row["val_objective"] == pytest.approx(json.loads(row["val_acc_by_task"])[row["task"]]
                                                         - json.loads(ctl["val_acc_by_task"])[row["task"]])
        if row["defense"] != "control":
            assert row["cell_value"] == pytest.approx(value, nan_ok=True)
        checked += 1
    assert checked == len(ok) and checked >= 8


def test_controls_are_added_once_per_attack_input_and_the_name_is_reserved(micro_preset: Preset) -> None:
    from bench.harness.grid import ConfigError, expand

    grid = micro_preset.grid.model_copy(update={"defenses": [PluginSpec(name="none"), PluginSpec(
        name="trap2", config={"lambda": 0.0})], "seeds": [0, 1]})
    tasks = {model: micro_preset.zoo.expert_tasks_of(model) for model in micro_preset.zoo.models}
    cells = expand(grid, tasks, list(micro_preset.zoo.downstream_tasks))
    controls = [cell for cell in cells if cell.defense.defense == "control"]
    merge_none = [c for c in cells if c.defense.defense == "none" and c.defense.track == "merge"]
    finetune_none = [c for c in cells if c.defense.defense == "none" and c.defense.track == "finetune"]
    assert len(controls) == len(merge_none) + len(finetune_none)  # shared by none and trap2
    assert {c.defense.defense_config for c in controls} == {'{"control": "release-free"}', '{"control": "from-scratch"}'}
    assert cells[-len(controls):] == controls
    with pytest.raises(ConfigError, match="reserved for the harness's own"):
        expand(grid.model_copy(update={"defenses": [PluginSpec(name="none", label="control")]}), tasks, ["successor"])
