"""Plugins join through entry points and decorators only (issue 17): a defense written in a temporary file,
declared by a distribution on the path, is listed and benchmarked without editing the harness; the
built-ins are declared the same way; the decorator's metadata is checked as strictly as a submission's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from bench.plugins import ATTACKS, DEFENSES, Defense, Release, register_defense
from tasks.registry import TASKS

ROOT = Path(__file__).resolve().parents[2]

PLUGIN_SOURCE = '''
"""A third-party defense: releases the plain expert with its update scaled by a factor (a config knob)."""

import copy

import torch
from pydantic import Field

from bench.config import StrictModel
from bench.plugins import Defense, OwnerView, Release, register_defense


class ShrinkConfig(StrictModel):
    factor: float = Field(1.0, gt=0)


@register_defense(tracks={"merge"}, formats={"full"}, paper="test plugin")
class Shrink(Defense[ShrinkConfig]):
    name = "shrink"
    description = "test plugin from a temporary file"

    def protect(self, owner: OwnerView) -> Release:
        release = copy.deepcopy(owner.unprotected())
        with torch.no_grad():
            for (_, weight), (_, base) in zip(release.state_dict().items(), owner.base.state_dict().items()):
                weight.copy_(base + self.config.factor * (weight - base))
        return Release(release)
'''


def write_distribution(where: Path, module: str, source: str, group: str, entry: str) -> None:
    """A module plus the dist-info that importlib.metadata reads: what `pip install` of a plugin leaves."""
    (where / f"{module}.py").write_text(textwrap.dedent(source))
    info = where / f"{module.replace('_', '-')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry} = {module}\n")


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The plugin's distribution on the path; its module is forgotten afterwards, so the next test's
    entry-point scan imports it (and its decorator registers it) again, as a fresh process would."""
    write_distribution(tmp_path, "shrink_plugin", PLUGIN_SOURCE, "lockbench.defenses", "shrink")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("shrink_plugin", None)


def test_a_defense_in_a_temporary_file_is_listed_through_its_entry_point(plugin_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([str(Path(sys.executable).parent / "lockbench"), "list", "defenses"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "shrink" in listed.stdout and "trap2" in listed.stdout


def test_the_registry_finds_it_typed_by_its_config(plugin_path: Path) -> None:
    with DEFENSES.scoped():
        DEFENSES.reload()  # as if the plugin had been installed before the first lookup
        assert {"shrink", "none", "trap2"} <= set(DEFENSES.names())
        shrink = DEFENSES.get("shrink")
        assert shrink.Config.__name__ == "ShrinkConfig" and shrink.tracks == frozenset({"merge"})
        assert shrink.formats == frozenset({"full"}) and shrink.paper == "test plugin"
        assert shrink(shrink.Config(factor=0.5)).config.factor == 0.5


@pytest.mark.slow
def test_a_defense_in_a_temporary_file_runs_in_the_harness(plugin_path: Path, micro_preset, tmp_path: Path) -> None:
    """The whole pipeline on the micro zoo: a release scaled to half its update is benchmarked like any other."""
    from bench.presets.grid import PluginSpec
    from bench.report.leaderboard import run_and_write
    from bench.results import read_csv

    with DEFENSES.scoped():
        DEFENSES.reload()
        grid = micro_preset.grid.model_copy(update={
            "defenses": [PluginSpec(name="none"), PluginSpec(name="shrink", config={"factor": 0.5})],
            "merge_attacks": [PluginSpec(name="task_arithmetic")], "finetune_attacks": []})
        summary = run_and_write(micro_preset.model_copy(update={"grid": grid}), tmp_path / "root", tmp_path / "run")
    assert summary.failed == 0
    cells = read_csv(tmp_path / "run" / "cells.csv", "cells")
    shrunk = cells[cells.defense == "shrink"]
    assert len(shrunk) and set(shrunk.status) <= {"ok", "n/a"} and (shrunk.status == "ok").any()


def test_a_broken_third_party_plugin_is_skipped_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    write_distribution(tmp_path, "broken_plugin", "raise ImportError('boom')\n", "lockbench.defenses", "broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    with DEFENSES.scoped():
        DEFENSES.reload()
        assert "none" in DEFENSES.names() and "broken" not in DEFENSES.names()
    assert "boom" in caplog.text


def test_every_builtin_plugin_module_is_declared_as_an_entry_point() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    for group, folder in (("lockbench.defenses", "defenses"), ("lockbench.attacks", "attacks"),
                          ("lockbench.tasks", "tasks/builtin")):
        package = folder.replace("/", ".")
        modules = {f"{package}.{path.stem}" for path in (ROOT / folder).glob("*.py") if not path.stem.startswith("_")
                   and path.stem != "common"}
        assert modules == set(declared[group].values()), group
    assert len(DEFENSES.names()) >= 6 and len(ATTACKS.names()) >= 10 and len(TASKS.names()) >= 17


def test_the_decorator_checks_metadata_as_strictly_as_a_submission() -> None:
    class NoTracks(Defense):
        name = "no_tracks"
        description = "declares no track"

        def protect(self, owner):
            return Release(owner.unprotected())

    with DEFENSES.scoped(), pytest.raises(TypeError, match="tracks is not declared"):
        register_defense(NoTracks)
    with DEFENSES.scoped(), pytest.raises(TypeError, match="finetune track but not the format 'full'"):
        register_defense(tracks={"finetune"}, formats={"adapter"})(NoTracks)
    with DEFENSES.scoped():
        registered = register_defense(tracks={"merge"})(NoTracks)
        assert DEFENSES.get("no_tracks") is registered and registered.tracks == frozenset({"merge"})
    assert DEFENSES.registered("no_tracks") is None  # scoped: gone after the block


def test_another_test_modules_plugins_are_not_registered_here() -> None:
    """tests/conftest.py: other test modules' plugins, and the fault plugins of tests/fault_plugins.py (which
    this module does not import), exist only in the modules that define or import them."""
    foreign = {name: cls.__module__ for registry in (DEFENSES, ATTACKS) for name in registry.names()
               if "." not in (cls := registry.get(name)).__module__ and cls.__module__ != __name__}
    assert foreign == {}
    assert "fault_plugins" in sys.modules or "rel_merge" not in ATTACKS.names()


def test_an_install_without_the_built_in_entry_points_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkout whose installed metadata predates the entry points (pulled, not reinstalled) says so."""
    import bench.plugins.registry

    monkeypatch.setattr(bench.plugins.registry, "entry_points", lambda group: [])
    registry = bench.plugins.registry.Registry("defense", Defense, "lockbench.defenses")
    with pytest.raises(RuntimeError, match="reinstall it"):
        registry.names()
