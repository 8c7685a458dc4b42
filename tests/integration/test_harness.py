"""Harness guarantees (DESIGN §2, §7) on the micro preset: atomic storage, the information boundary, failure
isolation, the derived numbers recomputed by hand, and the controls (the CLI's end-to-end runs — determinism,
SIGKILL and resume, Ray — are tests/system/test_harness_e2e.py). Micro's models score ≈ 0, so these check plumbing;
the in-process boundary and failure tests keep lm-eval. Every test shares one micro zoo (conftest's
`micro_zoo`); stages after the zoo are content-addressed caches, and `reset_stages` deletes them.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import fault_plugins  # noqa: F401  (registers rel_raiser and rel_nan, the failing defenses used here)
import pandas as pd
import pytest
import torch
import yaml
from harness_runs import (
    cell_files,
    hidden_entries,
    reset_stages,
)
from safetensors.torch import load_file
from snooper import BOUNDARY, SECRET, Snooper

from attacks.common import merge_release
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
from bench.presets.grid import GridConfig, PluginSpec
from bench.runtime.storage import _scratch_prefix, cached_directory, is_complete

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


def _write_preset(preset: Preset, path: Path) -> Path:
    path.write_text(yaml.safe_dump(preset.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path




# ----------------------------------------------------------------------------- storage (fast)


def test_killed_atomic_directory_is_cleaned_and_not_mistaken_for_a_result(tmp_path: Path) -> None:
    """A SIGKILL skips `finally`: the scratch copy stays behind, must not count as the artefact, and the
    next build of the same target must remove it (scratch of live builders is left alone)."""
    target = tmp_path / "releases" / "model-abc"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from bench.runtime.storage import atomic_directory
        with atomic_directory(Path({str(target)!r})) as scratch:
            (scratch / "weights").write_text("partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = hidden_entries(tmp_path, "releases")
    assert len(leftovers) == 1 and (leftovers[0] / "weights").read_text() == "partial"
    assert not target.exists() and not is_complete(target)

    live = Path(tempfile.mkdtemp(prefix=_scratch_prefix(target), dir=target.parent))  # "another worker"
    built = cached_directory(target, lambda scratch: (scratch / "weights").write_text("complete"))
    assert built == target and is_complete(target)
    assert (target / "weights").read_text() == "complete"
    assert hidden_entries(tmp_path, "releases") == [live]


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
    from bench.report.leaderboard import run_and_write

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

    reset_stages(micro_root)
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
        reset_stages(micro_root)  # its scores saw the canary row: no later test may reuse them


@pytest.mark.slow
def test_failing_defenses_fail_only_their_cells(micro_root: Path, micro_preset: Preset, tmp_path: Path) -> None:
    """A crashing defense and one releasing NaNs fail their own cells with a reason; `none` still runs,
    failed cells are not cached (a re-run retries them), and the CLI exits non-zero."""
    from typer.testing import CliRunner

    from bench.commands.cli import app

    reset_stages(micro_root)
    preset = _micro_with_grid(
        micro_preset, merge_attacks=[PluginSpec(name="task_arithmetic")],
        defenses=[PluginSpec(name="none"), PluginSpec(name="rel_raiser"), PluginSpec(name="rel_nan")])
    path = _write_preset(preset, tmp_path / "failing.yaml")
    result = CliRunner().invoke(app, ["run", "--preset", str(path), "--root", str(micro_root),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code != 0, result.output
    assert "8 cells (0 cached, 4 failed)" in result.output, result.output  # 6 cells and the 2 controls

    cells = pd.read_csv(tmp_path / "run" / "cells.csv", dtype=str, keep_default_na=False)
    by_defense = {name: group for name, group in cells.groupby("defense")}
    assert set(by_defense) == {"none", "rel_raiser", "rel_nan", "control"}
    assert (by_defense["control"]["status"] == "ok").all()
    assert (by_defense["none"]["status"] == "ok").all()
    assert len(by_defense["none"]) == 2
    exploded = by_defense["rel_raiser"]
    assert (exploded["status"] == "failed").all()
    assert exploded["error"].str.contains("RuntimeError: rel_raiser refuses").all()
    poisoned = by_defense["rel_nan"]
    assert (poisoned["status"] == "failed").all()
    assert poisoned["error"].str.contains("non-finite weights").all(), poisoned["error"].tolist()
    assert len(cell_files(micro_root)) == 4, "only the ok cells are cached (none's 2 and their 2 controls)"


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
    from bench.config import ConfigError
    from bench.harness.grid import expand

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
