"""Reliability (issue 8): SIGKILL at five points of a run, bad inputs, safe weight loading, damaged caches,
and a 300-cell grid through Ray with bounded memory. Scored by the double (tests/fakes.FakeScorer).

Every run uses `rel`: micro's Llama zoo and a 3-cell grid of this module's fast plugins, so results do
not move when the reference attacks are retuned. Subprocess runs import this module through
LOCKBENCH_PLUGINS (bench.harness.executors) so the plugins register in the CLI and in Ray workers too.
Crashes are injected with LOCKBENCH_FAULT (bench.storage.fault_point): the process SIGKILLs itself at a
named moment, which is what an external kill at that moment does, only reproducibly.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import hashlib
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fakes import FAKE_SCORER
from pydantic import Field

from bench.config import StrictModel
from bench.harness.scoring import SCORER_ENV
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

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MODULE = Path(__file__).stem  # what LOCKBENCH_PLUGINS imports in subprocesses and Ray workers
TIMEOUT_S = 600
# Every run of this module scores with the double (tests/fakes), in-process through `fake_scoring` and in
# subprocesses through `_env`: these tests check resuming, failures and memory, not accuracy.
pytestmark = pytest.mark.usefixtures("fake_scoring")


# ----------------------------------------------------------------------------- plugins (fast, deterministic)


def _plain_state(model: Any) -> dict[str, torch.Tensor]:
    from bench.evaluate import as_plain_model

    return {name: tensor.detach().clone() for name, tensor in as_plain_model(model).state_dict().items()}


def fingerprint(model: Any) -> str:
    """A hash of the weights (rounded to 1e-6): micro scores 0 everywhere, so cells are compared by this."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_plain_state(model).items()):
        digest.update(name.encode())
        digest.update(torch.round(tensor.double() * 1e6).to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


@register_attack
class RelMerge(Attack):
    """Task arithmetic in plain torch: base + Σ (member − base), the release among the members."""

    name = "rel_merge"
    description = "test plugin: task arithmetic without mergekit"
    track = "merge"
    family = "pinned"

    def run(self, view: PublicView) -> AttackOutput:
        base = _plain_state(view.base)
        merged = copy.deepcopy(view.base)
        states = [_plain_state(view.release)] + [_plain_state(expert) for expert in view.public_experts.values()]
        with torch.no_grad():
            merged.load_state_dict({name: tensor + sum(state[name] - tensor for state in states)
                                    for name, tensor in base.items()})
        return AttackOutput(models={1.0: merged.eval()}, knobs={"method": "rel_merge", "fingerprint": fingerprint(merged)})


@register_attack
class RelFinetune(Attack):
    """Two steps of the zoo's training loop on the attacker's data (seeded, so reruns agree)."""

    name = "rel_finetune"
    description = "test plugin: a two-step full fine-tune"
    track = "finetune"
    family = "finetune"

    def run(self, view: PublicView) -> AttackOutput:
        from bench.evaluate import as_plain_model
        from bench.zoo.training import TrainSettings, tokenise, train

        model = copy.deepcopy(as_plain_model(view.release)).train()
        data = tokenise(view.tokenizer, view.attacker_train.prompts[:64], view.attacker_train.answers[:64])
        train(model, data, TrainSettings(steps=2, lr=1e-3, batch_size=16, seed=view.seed))
        return AttackOutput(models={fraction: model.eval() for fraction in view.budget_fractions},
                            knobs={"method": "full", "lr": 1e-3, "steps": 2, "fingerprint": fingerprint(model)},
                            steps=2, examples=64)


class FastConfig(StrictModel):
    k: int = Field(0, ge=0)


@register_attack
class RelFast(Attack):
    """Returns the release as the merge (no compute): the 300-cell grid measures the harness, not attacks."""

    name = "rel_fast"
    description = "test plugin: instant merge attack, one cell per config value"
    track = "merge"
    family = "pinned"
    Config = FastConfig

    def run(self, view: PublicView) -> AttackOutput:
        from bench.evaluate import as_plain_model

        return AttackOutput(models={1.0: as_plain_model(view.release)}, knobs={"method": "rel_fast"})


@register_defense
class RelRaiser(Defense):
    name = "rel_raiser"
    description = "test plugin: raises in protect"
    tracks = frozenset({"merge"})

    def protect(self, owner: OwnerView) -> Release:
        raise RuntimeError("rel_raiser refuses\nover two lines")


@register_defense
class RelNan(Defense):
    name = "rel_nan"
    description = "test plugin: releases NaN weights"
    tracks = frozenset({"merge"})

    def protect(self, owner: OwnerView) -> Release:
        model = copy.deepcopy(owner.unprotected())
        with torch.no_grad():
            next(p for p in model.parameters() if p.is_floating_point()).fill_(math.nan)
        return Release(model)


@register_defense
class RelWrongType(Defense):
    name = "rel_wrong_type"
    description = "test plugin: returns a state dict instead of a Release"
    tracks = frozenset({"merge"})

    def protect(self, owner: OwnerView) -> Release:
        return owner.unprotected().state_dict()  # type: ignore[return-value]


# ----------------------------------------------------------------------------- helpers


def _env(**extra: str) -> dict[str, str]:
    """A subprocess environment: offline, this module's plugins, no inherited Ray cluster or fault."""
    from bench.offline import OFFLINE_ENV

    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "LOCKBENCH_FAULT", "LOCKBENCH_DEBUG", "LOCKBENCH_PLUGINS")}
    env.update(OFFLINE_ENV)
    # One torch thread: as fast for micro's tiny models, and immune to oversubscription on a busy machine.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["LOCKBENCH_PLUGINS"] = MODULE
    env[SCORER_ENV] = FAKE_SCORER  # plumbing: no lm-eval in the CLI or its Ray workers either
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _rel_data(micro_preset: Any, **grid: Any) -> dict[str, Any]:
    """micro's zoo with Llama only, and a grid of this module's plugins (3 cells and their 3 controls unless
    overridden)."""
    data = micro_preset.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["name"] = "rel"
    data["zoo"]["models"] = {"llama": data["zoo"]["models"]["llama"]}
    data["grid"] = {"defenses": [{"name": "none"}], "merge_attacks": [{"name": "rel_merge"}],
                    "finetune_attacks": [{"name": "rel_finetune"}], "seeds": [0],
                    "release_formats": ["full", "adapter"], "protected_tasks": ["sort"], "budget_fractions": [1.0],
                    **grid}
    return data


def _write_yaml(data: Any, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(args: list[str], env: dict[str, str] | None = None, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lockbench"), *args], env=env or _env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _run_args(preset: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--preset", str(preset), "--root", str(root), "--out", str(out), *extra]


def _check_ok(result: subprocess.CompletedProcess, cells: int) -> None:
    """A finished run: micro is too small to pass the validity rule, so exit 1 with VALIDITY lines is fine."""
    detail = f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode in (0, 1), detail
    assert f"{cells} cells (" in result.stdout and " 0 failed)" in result.stdout, detail
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert all("broke the validity rule" in line for line in errors), detail  # the exit-1 rule line only
    assert (result.returncode == 1) == bool(errors), detail
    assert "Traceback" not in result.stderr, detail


def _cells(run_dir: Path) -> Any:
    import pandas as pd

    from bench.results import TIMING_COLUMNS

    frame = pd.read_csv(run_dir / "cells.csv", dtype=str, keep_default_na=False)
    return frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])


def _assert_same_cells(actual: Path, expected: Path) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(_cells(actual), _cells(expected), check_exact=True)


def _records(root: Path) -> dict[str, Any]:
    """Every cached cell record (with the weight fingerprints the CSV does not carry), minus wall-clock times."""
    return {path.name: {k: v for k, v in json.loads(path.read_text()).items() if not k.endswith("_seconds")}
            for path in sorted((root / "cells").glob("[!.]*.json"))}


def _digests(root: Path, folder: str) -> dict[str, str]:
    """SHA-256 of every weights file under root/folder, by relative path (names are content hashes)."""
    return {str(p.relative_to(root)): _sha(p) for p in sorted((root / folder).rglob("*.safetensors"))
            if not any(part.startswith(".") for part in p.relative_to(root).parts)}


def _assert_same_results(root: Path, out: Path, reference: tuple[Path, Path]) -> None:
    """Same cells.csv, same cell records (weights fingerprints included), same release weights."""
    _assert_same_cells(out, reference[1])
    assert _records(root) == _records(reference[0])
    assert _digests(root, "releases") == _digests(reference[0], "releases")


def _hidden(root: Path) -> list[Path]:
    """Scratch and temporary entries anywhere under `root` (names starting with a dot)."""
    return sorted(p for p in root.rglob(".*") if p.name != ".complete")


def _zoo_copy(reference_root: Path, target: Path) -> Path:
    """A storage root holding only the reference's zoo and tasks: every later stage is recomputed."""
    target.mkdir(parents=True)
    for name in ("zoo", "tasks"):
        shutil.copytree(reference_root / name, target / name, symlinks=True)
    return target


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def _assert_no_csv(out: Path) -> None:
    leftovers = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert not leftovers, f"a failed run left files in {out}: {leftovers}"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def rel_preset(micro_preset: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_yaml(_rel_data(micro_preset), tmp_path_factory.mktemp("rel") / "rel.yaml")


@pytest.fixture(scope="session")
def reference(rel_preset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted run from an empty storage root: (root, run directory)."""
    base = tmp_path_factory.mktemp("reference")
    root, out = base / "root", base / "run"
    _check_ok(_cli(_run_args(rel_preset, root, out)), 6)
    return root, out


# ----------------------------------------------------------------------------- SIGKILL at five points


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
    root = tmp_path / "root" if empty_root else _zoo_copy(reference_root, tmp_path / "root")
    out = tmp_path / "run"
    killed = _cli(_run_args(rel_preset, root, out), env=_env(LOCKBENCH_FAULT=fault))
    assert killed.returncode == -signal.SIGKILL, f"not killed at {fault}:\n{killed.stdout}\n{killed.stderr[-3000:]}"
    check_killed_state(root, out)

    resumed = _cli(_run_args(rel_preset, root, out))
    _check_ok(resumed, 6)
    _assert_same_results(root, out, reference)
    assert _digests(root, "zoo") == _digests(reference_root, "zoo")
    assert (out / "README.md").is_file()
    assert not _hidden(root), f"scratch or temporary files left: {_hidden(root)}"
    assert not _hidden(out), f"staging files left in the run directory: {_hidden(out)}"


@pytest.mark.slow
def test_an_adapter_rebuilt_alone_matches_the_uninterrupted_build(rel_preset: Path, reference: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    from bench.presets import load_preset
    from bench.zoo.build import build_zoo

    root = _zoo_copy(reference[0], tmp_path / "root")
    adapter = next((root / "zoo" / "lora").glob("llama-max-*"))
    shutil.rmtree(adapter)
    build_zoo(load_preset(str(rel_preset)).zoo, root)
    assert _digests(root, "zoo") == _digests(reference[0], "zoo")


# ----------------------------------------------------------------------------- bad inputs


def _preset_case(mutate: Callable[[dict[str, Any]], Any]) -> Callable[[Any, Path], list[str]]:
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        data = _rel_data(micro_preset)
        mutate(data)
        return ["--preset", str(_write_yaml(data, tmp / "bad.yaml"))]
    return make


def _text_case(text: Callable[[Path], str]) -> Callable[[Any, Path], list[str]]:
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        path = tmp / "bad.yaml"
        path.write_text(text(path))
        return ["--preset", str(path)]
    return make


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value
    return mutate


def _rename_key(path: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[new] = data.pop(last)
    return mutate


def _pretrained_dir(kind: str) -> Callable[[Any, Path], list[str]]:
    """A zoo whose Llama is a user-supplied folder: missing, pickle-only, custom-code or truncated."""
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        folder = tmp / "model"
        if kind != "missing":
            folder.mkdir()
            config: dict[str, Any] = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
            if kind == "pickle":
                (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Booby(tmp / "PWNED")))
            if kind == "custom-code":
                config.update(model_type="rel_evil", auto_map={"AutoModelForCausalLM": "evil.Evil"})
                (folder / "evil.py").write_text(f"open({str(tmp / 'PWNED')!r}, 'w').close()\n")
                (folder / "model.safetensors").write_bytes(_tiny_safetensors())
            if kind == "truncated":
                (folder / "model.safetensors").write_bytes(_tiny_safetensors()[:-7])
            (folder / "config.json").write_text(json.dumps(config))
        data = _rel_data(micro_preset)
        data["zoo"]["models"]["llama"] = {"pretrained": str(folder)}
        return ["--preset", str(_write_yaml(data, tmp / "bad.yaml"))]
    return make


class _Booby:
    """Unpickling this touches a file: proof that a pickle was (never) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _tiny_safetensors() -> bytes:
    from safetensors.torch import save

    return save({"weight": torch.ones(4, 4)})


def _blocked_path(kind: str) -> Callable[[Any, Path], list[str]]:
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        (tmp / "a-file").write_text("not a directory")
        preset = _write_yaml(_rel_data(micro_preset), tmp / "rel.yaml")
        if kind == "out":
            return ["--preset", str(preset), "--out", str(tmp / "a-file" / "run")]
        return ["--preset", str(preset), "--root", str(tmp / "a-file")]
    return make


def _args(*extra: str, preset: bool = True) -> Callable[[Any, Path], list[str]]:
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        head = ["--preset", str(_write_yaml(_rel_data(micro_preset), tmp / "rel.yaml"))] if preset else []
        return [*head, *extra]
    return make


#: id: (arguments after `lockbench run`, exit code, text the one error line must contain)
BAD_INPUTS: dict[str, tuple[Callable[[Any, Path], list[str]], int, str]] = {
    "unknown-preset": (_args("--preset", "smok", preset=False), 2, "did you mean 'smoke'"),
    "preset-file-missing": (_args("--preset", "/nonexistent/p.yaml", preset=False), 2, "preset file not found"),
    "yaml-syntax": (_text_case(lambda path: "name: x\n  zoo: [\n"), 2, "not valid YAML"),
    "yaml-not-a-mapping": (_text_case(lambda path: "- just\n- a list\n"), 2, "must be a YAML mapping"),
    "config-key-typo": (_preset_case(_rename_key("zoo.base_training", "base_trainig")), 2,
                        "did you mean 'base_training'"),
    "grid-key-typo": (_preset_case(_rename_key("grid.seeds", "sedes")), 2, "did you mean 'seeds'"),
    "extends-itself": (_text_case(lambda path: f"extends: {path}\nname: x\n"), 2, "extends itself"),
    "no-grid": (_preset_case(lambda d: d.pop("grid")), 2, "has no grid section"),
    "unknown-defense": (_preset_case(_set("grid.defenses", [{"name": "nonee"}])), 2,
                        "unknown defense 'nonee' (did you mean 'none'?)"),
    "unknown-attack": (_preset_case(_set("grid.merge_attacks", [{"name": "rel_merg"}])), 2,
                       "unknown attack 'rel_merg' (did you mean 'rel_merge'?)"),
    "plugin-config-typo": (_preset_case(_set("grid.merge_attacks", [{"name": "rel_fast", "config": {"kk": 1}}])),
                           2, "kk"),
    "negative-plugin-value": (_preset_case(_set("grid.merge_attacks", [{"name": "rel_fast", "config": {"k": -1}}])),
                              2, "greater than or equal to 0"),
    "negative-steps": (_preset_case(_set("zoo.base_training.steps", -5)), 2, "zoo.base_training.steps"),
    "seeds-not-ints": (_preset_case(_set("grid.seeds", ["zero"])), 2, "grid.seeds.0"),
    "seeds-option-not-ints": (_args("--seeds", "0,x"), 2, "comma-separated integers"),
    "empty-grid": (_preset_case(lambda d: d["grid"].update(merge_attacks=[], finetune_attacks=[])), 2,
                   "expands to no cells"),
    "no-defenses": (_preset_case(_set("grid.defenses", [])), 2, "grid.defenses"),
    "unknown-model": (_preset_case(_set("grid.models", ["llamma"])), 2, "does not have"),
    "unknown-task": (_preset_case(_set("grid.protected_tasks", ["sortt"])), 2, "sortt"),
    "bad-budget-fraction": (_preset_case(_set("grid.budget_fractions", [0.5, 1.5])), 2, "budget_fractions"),
    "unknown-executor": (_args("--executor", "dask"), 2, "unknown executor"),
    "missing-model-path": (_pretrained_dir("missing"), 2, "is not a directory"),
    "pickle-only-model": (_pretrained_dir("pickle"), 2, "pytorch_model.bin: pickle files, which lockbench never loads"),
    "custom-code-model": (_pretrained_dir("custom-code"), 2, "trust_remote_code"),
    "truncated-user-weights": (_pretrained_dir("truncated"), 2, "damaged weights"),
    "unwritable-out-dir": (_blocked_path("out"), 2, "cannot write to run directory"),
    "unwritable-storage-root": (_blocked_path("root"), 2, "Not a directory"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_ends_with_one_line_error_and_no_csv(case: str, micro_preset: Any, tmp_path: Path) -> None:
    """Rejected before any compute: one `error:` line and nothing else on stderr, exit 2, an untouched
    storage root, and no file in the run directory."""
    from typer.testing import CliRunner

    from bench.cli import app

    make, code, expected = BAD_INPUTS[case]
    args = make(micro_preset, tmp_path)
    root, out = tmp_path / "root", tmp_path / "out"
    defaults = [] if "--root" in args else ["--root", str(root)]
    defaults += [] if "--out" in args else ["--out", str(out)]
    result = CliRunner().invoke(app, ["run", *args, *defaults])
    assert result.exit_code == code, f"{result.output}\n{result.exception!r}"
    line = _one_error_line(result.stderr)
    assert result.stderr.strip() == line, f"more than the error line on stderr:\n{result.stderr}"
    assert expected in line, line
    assert not root.exists() or not any(root.rglob("*")), f"compute was spent: {sorted(root.rglob('*'))[:5]}"
    _assert_no_csv(out)
    assert not (tmp_path / "PWNED").exists(), "a pickle or custom code from the model folder was executed"


FAILING_PLUGINS: dict[str, tuple[dict[str, Any], int, int, str]] = {
    # id: (grid, its failed cells, all cells with the controls, text the error line must contain)
    "defense-raises": ({"defenses": [{"name": "rel_raiser"}]}, 2, 4, "RuntimeError: rel_raiser refuses"),
    "defense-nan-weights": ({"defenses": [{"name": "rel_nan"}]}, 2, 4, "non-finite weights"),
    "defense-wrong-type": ({"defenses": [{"name": "rel_wrong_type"}]}, 2, 4, "expected Release"),
    # the control runs the same attack, so it fails the same way
    "attack-reports-bad-knob": ({"merge_attacks": [], "finetune_attacks": [{"name": "rel_bad_knob"}]}, 2, 2,
                                "ft_method has values outside"),
}


@register_attack
class RelBadKnob(RelFinetune):
    """Reports a fine-tuning method the cells schema does not know."""

    name = "rel_bad_knob"
    description = "test plugin: reports knob method 'qlora'"

    def run(self, view: PublicView) -> AttackOutput:
        output = super().run(view)
        output.knobs["method"] = "qlora"
        return output


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FAILING_PLUGINS))
def test_failing_plugin_ends_with_one_line_error(case: str, micro_preset: Any, reference: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """The grid runs; the plugin's cells are recorded as failed in complete CSVs (never cached), and the
    command ends with one error line naming the failure and exit 1."""
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.results import read_csv

    grid, count, total, expected = FAILING_PLUGINS[case]
    preset = _write_yaml(_rel_data(micro_preset, **{"finetune_attacks": [], **grid}), tmp_path / "failing.yaml")
    root, out = _zoo_copy(reference[0], tmp_path / "root"), tmp_path / "out"
    result = CliRunner().invoke(app, _run_args(preset, root, out))
    assert result.exit_code == 1, result.output
    line = _one_error_line(result.stderr)
    assert line == result.stderr.strip().splitlines()[-1], "the error line comes last"
    assert f"{count} of {total} cells failed" in line and expected in line, line
    cells = read_csv(out / "cells.csv", "cells")  # complete and schema-valid, one row per cell
    assert len(cells) == total and (cells["status"] == "failed").sum() == count
    assert (cells.loc[cells["status"] == "failed", "defense"] != "control").all() or case.startswith("attack")
    if case.startswith("defense"):
        cached = [json.loads(path.read_text())["defense"] for path in (root / "cells").glob("*.json")]
        assert set(cached) <= {"control"}, "failed cells must not be cached (only the controls succeeded)"
    assert not _hidden(out)


def test_describe_error_one_line_and_exit_codes() -> None:
    from pydantic import ValidationError

    from bench.cli import describe_error
    from bench.harness.grid import ConfigError, GridConfig

    assert describe_error(ConfigError("bad grid")) == (2, "bad grid")
    assert describe_error(KeyError("unknown defense 'x'")) == (2, "unknown defense 'x'")
    assert describe_error(FileNotFoundError(2, "No such file or directory", "/x")) == (
        2, "No such file or directory: /x")
    with pytest.raises(ValidationError) as caught:
        GridConfig(defenses=[], seeds=["a"])  # type: ignore[list-item]
    code, message = describe_error(caught.value)
    assert code == 2 and "\n" not in message and "defenses" in message and "seeds" in message
    code, message = describe_error(RuntimeError("boom\nsecond line"))
    assert code == 1 and message.startswith("RuntimeError: boom | second line") and "--debug" in message


@pytest.mark.slow
def test_the_installed_command_prints_one_line_and_a_traceback_only_when_debugging(
        micro_preset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `lockbench` entry point: exactly one stderr line and exit 2; with LOCKBENCH_DEBUG=1 (or
    --debug) the error propagates with its traceback instead."""
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.harness.grid import ConfigError

    preset = _write_yaml(_rel_data(micro_preset, defenses=[{"name": "nonee"}]), tmp_path / "bad.yaml")
    args = _run_args(preset, tmp_path / "root", tmp_path / "out")
    plain = _cli(args)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip() == _one_error_line(plain.stderr) and "did you mean 'none'" in plain.stderr
    for debug_args, value in ((["--debug"], "0"), ([], "1")):
        with monkeypatch.context() as patch:
            patch.setenv("LOCKBENCH_DEBUG", value)  # restored on exit, also after --debug has set it to 1
            result = CliRunner().invoke(app, [*debug_args, *args])
            assert result.exit_code != 0 and isinstance(result.exception, ConfigError), result.output


# ----------------------------------------------------------------------------- safe loading


def _calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str) -> Any:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "<expr>"
    return None


def test_weights_load_only_through_safetensors_and_no_remote_code_by_default() -> None:
    """Static: in every shipped module, torch.load passes weights_only=True, pickle is never used to load,
    model classes load with use_safetensors=True, and trust_remote_code is never literally True."""
    problems, checked = [], 0
    for package in ("bench", "attacks", "defenses", "tasks"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for call, name in _calls(tree):
                where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
                if name == "torch.load" and _keyword(call, "weights_only") is not True:
                    problems.append(f"{where} without weights_only=True")
                if name.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") and name.endswith(("load", "loads")):
                    problems.append(f"{where}: unpickling")
                if _keyword(call, "trust_remote_code") is True:
                    problems.append(f"{where}: trust_remote_code=True")
                if _keyword(call, "use_safetensors") is False:
                    problems.append(f"{where}: use_safetensors=False")
                if name.endswith(".from_pretrained") and name.split(".")[0].startswith("AutoModel"):
                    checked += 1
                    if _keyword(call, "use_safetensors") is not True:
                        problems.append(f"{where} without use_safetensors=True")
    assert not problems, problems
    assert checked >= 1, "expected at least the zoo's model loader"


def test_pickle_and_custom_code_folders_are_refused_without_running_them(tmp_path: Path) -> None:
    """Runtime: the zoo's loader (what every stage uses) refuses a pickle-only folder and a custom-code
    folder with trust_remote_code off, and neither the pickle nor the code runs."""
    from bench.zoo.build import load_model

    marker = tmp_path / "PWNED"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                     "hidden_size": 8, "intermediate_size": 16,
                                                     "num_attention_heads": 2, "num_hidden_layers": 1,
                                                     "num_key_value_heads": 2, "vocab_size": 32}))
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(_Booby(marker)))
    with pytest.raises(OSError, match="model.safetensors"):
        load_model(pickled)
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "rel_evil",
                                                    "auto_map": {"AutoConfig": "evil.EvilConfig",
                                                                 "AutoModelForCausalLM": "evil.Evil"}}))
    (custom / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (custom / "model.safetensors").write_bytes(_tiny_safetensors())
    with pytest.raises(ValueError, match="custom code"):
        load_model(custom)
    assert not marker.exists()
    pickle.loads((pickled / "pytorch_model.bin").read_bytes())  # control: the trap does fire when unpickled
    assert marker.exists()


def test_custom_code_is_allowed_only_when_the_zoo_entry_asks(micro_preset: Any, tmp_path: Path) -> None:
    from bench.harness.grid import ConfigError
    from bench.harness.run import check_zoo_inputs
    from bench.presets import Preset

    args = _pretrained_dir("custom-code")(micro_preset, tmp_path)
    data = yaml.safe_load(Path(args[1]).read_text())
    with pytest.raises(ConfigError, match="trust_remote_code"):
        check_zoo_inputs(Preset.model_validate(data))
    data["zoo"]["models"]["llama"]["trust_remote_code"] = True
    check_zoo_inputs(Preset.model_validate(data))  # the user asked for it: the folder passes the pre-flight
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_a_run_loads_models_only_with_safe_options(micro_preset: Any, reference: tuple[Path, Path],
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runtime: every model, adapter and tokenizer load of a whole run (all stages recomputed) uses
    safetensors and leaves trust_remote_code off, and torch.load is never called without weights_only."""
    import peft
    import transformers

    from bench.leaderboard import run_and_write
    from bench.presets import Preset

    seen: list[tuple[str, dict[str, Any]]] = []

    def spy(owner: Any, name: str) -> None:
        original = getattr(owner, name)
        function = original.__func__ if hasattr(original, "__func__") else original

        def wrapper(cls: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((f"{getattr(cls, '__name__', cls)}.{name}", kwargs))
            return function(cls, *args, **kwargs)
        monkeypatch.setattr(owner, name, classmethod(wrapper))

    spy(transformers.AutoModelForCausalLM, "from_pretrained")
    spy(transformers.AutoTokenizer, "from_pretrained")
    spy(peft.PeftModel, "from_pretrained")
    original_load = torch.load

    def guarded_load(*args: Any, **kwargs: Any) -> Any:
        seen.append(("torch.load", kwargs))
        return original_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", guarded_load)

    preset = Preset.model_validate(_rel_data(micro_preset))
    summary = run_and_write(preset, _zoo_copy(reference[0], tmp_path / "root"), tmp_path / "out")
    assert summary.failed == 0
    models = [kwargs for name, kwargs in seen if name.startswith("AutoModelForCausalLM")]
    assert models and all(kwargs.get("use_safetensors") is True for kwargs in models), models
    assert all(not kwargs.get("trust_remote_code") for _, kwargs in seen), seen
    assert all(kwargs.get("weights_only", True) is True for name, kwargs in seen if name == "torch.load")
    assert any(name.startswith("PeftModel") for name, _ in seen), "the adapter release was loaded"


# ----------------------------------------------------------------------------- damaged caches


def _flip_bytes(path: Path, at_end: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for index in range(len(data) - at_end, len(data) - at_end + 8):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_cache_entries_are_detected_and_rebuilt(rel_preset: Path, reference: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """Truncated and bit-flipped safetensors in the zoo and a release, a pickle in place of an adapter, a
    garbage cell record, a truncated score file and a malformed task JSONL: the re-run rebuilds each and
    ends with the uninterrupted run's cells."""
    root = tmp_path / "root"
    shutil.copytree(reference[0], root, symlinks=True)
    marker = tmp_path / "PWNED"
    base = next((root / "zoo" / "base").glob("llama-*")) / "model.safetensors"
    expert = next((root / "zoo" / "experts").glob("llama-sort-*")) / "model.safetensors"
    adapter = next((root / "zoo" / "lora").glob("llama-sort-*"))  # only the cached adapter release used it
    cell = next(p for p in (root / "cells").glob("[!.]*.json") if json.loads(p.read_text())["track"] == "finetune")
    release = next(p for p in (root / "releases").glob("none-llama-*")
                   if json.loads((p / "metrics.json").read_text()).get("acc:successor") is not None)
    release_weights = release / "public" / "model.safetensors"  # the finetune release: the cell above needs it
    scores = next((root / "scores").glob("base-llama-*.json"))  # every recomputed cell reads it
    task_file = next((root / "tasks").glob("*/sort/test.jsonl"))
    originals = {path: _sha(path) for path in (base, expert, release_weights, task_file)}

    base.write_bytes(base.read_bytes()[:-100])                        # truncated: the size check
    _flip_bytes(expert)                                                # same size: only the hash tells
    (adapter / "adapter_model.safetensors").unlink()                   # a pickle where weights were
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(_Booby(marker)))
    release_weights.write_bytes(release_weights.read_bytes()[: release_weights.stat().st_size // 2])
    cell.write_text('{"status": "ok", "trunc')
    scores.write_text(scores.read_text()[:5])
    task_file.write_text("{not json\n" + task_file.read_text())

    result = _cli(_run_args(rel_preset, root, tmp_path / "run"))
    _check_ok(result, 6)
    assert "6 cells (5 cached, 0 failed)" in result.stdout, result.stdout  # the truncated cell file reruns
    _assert_same_results(root, tmp_path / "run", reference)
    for path, digest in originals.items():
        assert path.is_file() and _sha(path) == digest, f"{path} was not rebuilt identically"
    from bench.storage import verify_directory

    assert verify_directory(adapter, deep=True) is None and not (adapter / "adapter_model.bin").exists()
    assert not marker.exists(), "the planted pickle was loaded"
    assert json.loads(cell.read_text())["status"] == "ok" and isinstance(json.loads(scores.read_text()), dict)


# ----------------------------------------------------------------------------- 300 cells through Ray


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
    preset = _write_yaml(_rel_data(micro_preset, merge_attacks=attacks, finetune_attacks=[],
                                   release_formats=["full"]), tmp_path / "many.yaml")
    root, out = _zoo_copy(reference[0], tmp_path / "root"), tmp_path / "run"
    with _isolated_ray_home() as home:
        env = _env(HOME=str(home), RAY_TMPDIR=str(home), RAY_USAGE_STATS_ENABLED="0")
        process = subprocess.Popen([str(BIN / "lockbench"), *_run_args(preset, root, out, "--executor", "ray")],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            with _RssSampler(process.pid, root / "cells", RAY_CELLS) as sampler:
                stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    _check_ok(result, RAY_CELLS)
    cells = _cells(out)
    assert len(cells) == RAY_CELLS and (cells["status"] == "ok").all()
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
