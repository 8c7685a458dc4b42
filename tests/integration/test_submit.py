"""`lockbench submit`: third-party defenses are checked before any compute, then run and filed.

Static checks run on files written to a temporary directory (outside the repository). The end-to-end
tests submit, on a one-model slice of the micro preset (plumbing: micro scores 0, so its runs break the
validity rule and are filed only with --allow-invalid), a copy of examples/noisy_release.py from a
temporary directory and a defense from a package built and pip-installed into a temporary target
directory, which the CLI finds through its `lockbench.defenses` entry point.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from fakes import MICRO_LLAMA_PRESET
from html_tables import parse
from typer.testing import CliRunner

from bench.commands.cli import app
from bench.runtime.offline import OFFLINE_ENV
from bench.zoo.build import Zoo

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
runner = CliRunner()

HEADER = "from bench.plugins import Defense, Release\nfrom bench.config import StrictModel\n"
GOOD = """
class Good(Defense):
    name = "good"
    description = "a fine defense"
    tracks = frozenset({"merge"})

    def protect(self, owner):
        return Release(owner.unprotected())
"""
BAD_SOURCES: dict[str, tuple[str, str]] = {
    "not a subclass": ("class Shield:\n    name = 'shield'\n    def protect(self, owner):\n        return owner\n",
                       "Shield in {path} is not a Defense subclass"),
    "nothing to find": ("X = 1\n", "no Defense subclass found in {path}"),
    "missing protect": (GOOD.replace("    def protect(self, owner):\n        return Release(owner.unprotected())\n", ""),
                        "Good is missing the method protect(self, owner: OwnerView) -> Release"),
    "missing name": (GOOD.replace('    name = "good"\n', ""), "Good is missing the class attribute name"),
    "missing description": (GOOD.replace('    description = "a fine defense"\n', ""),
                            "Good is missing the class attribute description"),
    "undeclared tracks": (GOOD.replace('    tracks = frozenset({"merge"})\n', ""),
                          "Good.tracks is not declared: set tracks = frozenset({'merge'})"),
    "unknown track": (GOOD.replace('{"merge"}', '{"merge", "distill"}'),
                      "Good.tracks has unknown tracks ['distill']; choose from merge, finetune"),
    "tracks as a string": (GOOD.replace('frozenset({"merge"})', '"merge"'), "Good.tracks must be a set of names"),
    "finetune without full": (GOOD.replace('{"merge"})', '{"finetune"})\n    formats = frozenset({"adapter"})'),
                              "Good declares the finetune track but not the format 'full'"),
    "plain pydantic Config": ("from pydantic import BaseModel\nclass C(BaseModel):\n    x: int = 1\n"
                              + GOOD.replace("    def protect", "    Config = C\n\n    def protect"),
                              "Good.Config must subclass bench.config.StrictModel, got a plain pydantic model"),
    "Config not a model": (GOOD.replace("    def protect", "    Config = dict\n\n    def protect"),
                           "Good.Config must subclass bench.config.StrictModel"),
    "Config without defaults": ("class C(StrictModel):\n    strength: float\n"
                                + GOOD.replace("    def protect", "    Config = C\n\n    def protect"),
                                "Good.Config rejects the default config {}: strength: Field required"),
    "protect signature": (GOOD.replace("protect(self, owner)", "protect(self, owner, key)"),
                          "must accept exactly one argument besides self"),
    "import error": ("import no_such_module_here\n", "importing {path} failed: ModuleNotFoundError"),
    "name of a built-in": (GOOD.replace('name = "good"', 'name = "none"'),
                           "defense name 'none' is already used by preset 'micro'"),
}


def _write(tmp_path: Path, source: str, name: str = "submission.py") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(source))
    return path


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_submissions_fail_fast_with_one_line_each(tmp_path: Path, case: str) -> None:
    """No zoo, no compute: --no-dry-run, and the static checks come first anyway."""
    source, message = BAD_SOURCES[case]
    path = _write(tmp_path, source)
    result = runner.invoke(app, ["submit", str(path), "--preset", "micro", "--check", "--no-dry-run",
                                 "--root", str(tmp_path / "root")])
    assert result.exit_code == 2, result.output
    assert message.replace("{path}", str(path)) in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), lines
    assert not (tmp_path / "root").exists(), "nothing may be built before the submission is valid"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "class Bad(Defense):\n    tracks = 'merge'\n")
    result = runner.invoke(app, ["submit", str(path), "--preset", "micro", "--check", "--no-dry-run"])
    assert result.exit_code == 2
    for message in ("missing the method protect", "missing the class attribute name",
                    "missing the class attribute description", "Bad.tracks must be a set of names"):
        assert message in result.output, result.output


def test_config_is_validated_against_the_schema(tmp_path: Path) -> None:
    common = ["--preset", "micro", "--check", "--no-dry-run"]
    example = str(REPO / "examples" / "noisy_release.py")
    result = runner.invoke(app, ["submit", example, "--config", '{"sigam": 0.1}', *common])
    assert result.exit_code == 2 and "NoisyRelease.Config rejects config" in result.output, result.output
    assert "sigam: Extra inputs are not permitted" in result.output
    result = runner.invoke(app, ["submit", example, "--config", '{"sigma": 0.1}', *common])
    assert result.exit_code == 0, result.output
    assert "'noisy_release'" in result.output and '{"sigma": 0.1}' in result.output


def test_unknown_spec_and_ambiguous_module(tmp_path: Path) -> None:
    result = runner.invoke(app, ["submit", "no_such_defense_anywhere", "--check", "--no-dry-run"])
    assert result.exit_code == 2
    assert "neither a file, an installed 'lockbench.defenses' entry point nor an importable module" in result.output
    path = _write(tmp_path, GOOD + GOOD.replace("class Good", "class Better").replace('"good"', '"better"'))
    result = runner.invoke(app, ["submit", str(path), "--check", "--no-dry-run", "--preset", "micro"])
    assert result.exit_code == 2 and "several Defense subclasses (Good, Better)" in result.output, result.output
    result = runner.invoke(app, ["submit", f"{path}:Better", "--check", "--no-dry-run", "--preset", "micro"])
    assert result.exit_code == 0 and "'better'" in result.output, result.output


# ----------------------------------------------------------------------------- dry run (micro zoo)


DRY_RUN_FAILURES = {
    "returns the model, not a Release": ("        return owner.unprotected()\n",
                                         "returned PeftModelForCausalLM, expected Release"),
    "returns a bare module": ("        import torch\n        return Release(torch.nn.Linear(2, 2))\n",
                              "must release a peft adapter for format 'adapter'"),
    "raises": ("        raise RuntimeError('boom')\n", "protect raised RuntimeError: boom"),
    "unstorable notes": ("        return Release(owner.unprotected(), notes={'f': print})\n",
                         "Release.notes must be JSON-serialisable"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(DRY_RUN_FAILURES))
def test_dry_run_catches_bad_releases(micro_zoo: Zoo, tmp_path: Path, case: str) -> None:
    body, message = DRY_RUN_FAILURES[case]
    source = GOOD.replace("        return Release(owner.unprotected())\n", body)
    path = _write(tmp_path, source)
    result = runner.invoke(app, ["submit", str(path), "--preset", "micro", "--check", "--root", str(micro_zoo.root)])
    assert result.exit_code == 2, result.output
    assert "error: dry run (merge track, format adapter, micro zoo model llama)" in result.output
    assert message in result.output, result.output


# ----------------------------------------------------------------------------- end to end (micro)

TINY_PRESET = MICRO_LLAMA_PRESET

PACKAGE_MODULE = '''\
"""A defense shipped in its own package: plain release, full weights only."""
from bench.plugins import Defense, Release


class Shield(Defense):
    name = "pkg_shield"
    description = "test package: releases the plain update"
    tracks = frozenset({"merge"})
    formats = frozenset({"full"})

    def protect(self, owner):
        return Release(owner.unprotected(), notes={"from": "a package"})
'''

PACKAGE_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "lockbench-test-shield"
version = "0.0.1"

[project.entry-points."lockbench.defenses"]
pkg_shield = "pkg_shield_plugin:Shield"

[tool.setuptools]
py-modules = ["pkg_shield_plugin"]
"""


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "PYTHONPATH")}
    return {**env, **OFFLINE_ENV, **extra}


def _install_package(tmp: Path) -> Path:
    """Build the package in `tmp/src` and install it into `tmp/site` (never into the shared .venv)."""
    source, site = tmp / "src", tmp / "site"
    source.mkdir()
    (source / "pyproject.toml").write_text(PACKAGE_PYPROJECT)
    (source / "pkg_shield_plugin.py").write_text(PACKAGE_MODULE)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, text=True, timeout=300,
                   env=_env(PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert list(site.glob("lockbench_test_shield-0.0.1.dist-info/entry_points.txt"))
    return site


@pytest.fixture(scope="module")
def filed(micro_zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Both submissions filed into one leaderboard directory."""
    tmp = tmp_path_factory.mktemp("submit")
    root = Path(micro_zoo.root)
    preset = tmp / "micro-llama.yaml"
    preset.write_text(TINY_PRESET)
    board = tmp / "leaderboard"
    common = ["--preset", str(preset), "--root", str(root), "--leaderboard-dir", str(board)]

    outside = tmp / "elsewhere" / "my_defense.py"  # a copy of the example, outside the repository
    outside.parent.mkdir()
    outside.write_text((REPO / "examples" / "noisy_release.py").read_text())
    refused = runner.invoke(app, ["submit", str(outside), *common, "--out", str(tmp / "run-refused")])
    from_file = runner.invoke(app, ["submit", str(outside), *common, "--out", str(tmp / "run-file"),
                                    "--allow-invalid"])

    site = _install_package(tmp)
    command = [str(BIN / "lockbench"), "submit", "pkg_shield", *common, "--out", str(tmp / "run-pkg"),
               "--allow-invalid"]
    without_site = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    from_package = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                  env=_env(PYTHONPATH=str(site)))
    return {"board": board, "root": root, "outside": outside, "refused": refused, "file": from_file,
            "without_site": without_site, "package": from_package}


def _cells(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "cells.csv", dtype=str, keep_default_na=False)


@pytest.mark.slow
def test_invalid_runs_are_not_filed_unless_allowed(filed: dict) -> None:
    refused = filed["refused"]
    assert refused.exit_code == 1, refused.output
    assert "the run broke the validity rule, so nothing was filed" in refused.output
    assert "VALIDITY: merge track, llama: 'none' is void on every input" in refused.output


@pytest.mark.slow
def test_a_defense_file_outside_the_repository_is_submitted(filed: dict) -> None:
    result = filed["file"]
    assert result.exit_code == 0, result.output
    folder = filed["board"] / "submissions" / "noisy_release"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "cells.csv", "leaderboard.csv",
                                                        "submission.json", "utility_vs_attack.png"]
    cells = _cells(folder)
    mine = cells[cells["defense"] == "noisy_release"]
    assert len(mine) == 2 and (mine["status"] == "ok").all(), mine[["status", "error"]]
    assert sorted(mine["release_format"]) == ["adapter", "full"] and set(mine["track"]) == {"merge"}
    assert json.loads(mine["defense_config"].iloc[0]) == {"sigma": 0.05}
    assert (cells["defense"] == "none").sum() == 3, "the references run beside it (merge ×2, finetune)"
    readme = (folder / "README.md").read_text()
    assert readme.startswith("# Submission: noisy_release")
    digest = hashlib.sha256(filed["outside"].read_bytes()).hexdigest()
    assert f"source: file my_defense.py (sha256 {digest})" in readme and str(filed["outside"]) not in readme
    assert "NOT VALID — not ranked" in readme and "| merge | llama | adapter |" in readme
    meta = json.loads((folder / "submission.json").read_text())
    assert meta["name"] == "noisy_release" and meta["valid"] is False and meta["cells"] == 2
    releases = list((Path(filed["root"]) / "releases").glob(f"noisy_release@{meta['code_hash']}-llama-*"))
    assert len(releases) == 2, "releases are cached under the code hash"


@pytest.mark.slow
def test_a_defense_in_an_installed_package_is_submitted(filed: dict) -> None:
    missing = filed["without_site"]
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "'pkg_shield' is neither a file, an installed 'lockbench.defenses' entry point" in missing.stderr
    result = filed["package"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("from entry point 'pkg_shield' = pkg_shield_plugin:Shield from lockbench-test-shield 0.0.1"
            in " ".join(result.stdout.split()))
    folder = filed["board"] / "submissions" / "pkg_shield"
    cells = _cells(folder)
    mine = cells[cells["defense"] == "pkg_shield"]
    statuses = dict(zip(mine["release_format"], mine["status"], strict=True))
    assert statuses == {"full": "ok", "adapter": "n/a"}, "it declares formats {'full'}: adapter cells are n/a"


@pytest.mark.slow
def test_both_submissions_are_on_the_leaderboard_page(filed: dict) -> None:
    page = parse((filed["board"] / "index.html").read_text())
    rows = {(r["run"][0], r["defense"][0], r["release_format"][0]) for r in page.records("submissions")}
    assert rows == {("submissions/noisy_release", "noisy_release", "adapter"),
                    ("submissions/noisy_release", "noisy_release", "full"),
                    ("submissions/pkg_shield", "pkg_shield", "full"),
                    ("submissions/pkg_shield", "pkg_shield", "adapter")}  # n/a: shown, as on published runs


@pytest.mark.slow
def test_changed_code_is_not_served_from_the_cache(filed: dict, tmp_path: Path) -> None:
    """Same name and config, edited source: a new code hash, so new releases instead of stale ones."""
    outside: Path = filed["outside"]
    edited = tmp_path / outside.name
    edited.write_text(outside.read_text().replace("param.add_(config.sigma * rms * noise)",
                                                  "param.add_(2 * config.sigma * rms * noise)"))
    result = runner.invoke(app, ["submit", str(edited), "--check", "--no-dry-run", "--preset", "micro"])
    assert result.exit_code == 0, result.output
    from bench.commands.submit import prepare

    assert prepare(str(edited)).code_hash != prepare(str(outside)).code_hash
    assert prepare(str(outside)).code_hash == prepare(str(outside)).code_hash


def test_rank_against_published_defenses_on_the_same_zoo() -> None:
    """Pool: this run's defenses plus published ones with the same zoo hash (this run's numbers win)."""
    from fakes import valid_raw_frame

    from bench.commands.submit import rank_rows
    from bench.results import ValidityRule, aggregate, score_cells

    board = aggregate(score_cells(valid_raw_frame(), ValidityRule()))
    merge = (board["track"] == "merge") & (board["defense"] == "trap2")
    hand = 0.95 * (1 - (1 / 3) / 0.75)  # test_results' hand values: seed 0 is the one live input
    assert board.loc[merge, "protection"].item() == pytest.approx(hand)
    rival = board[merge].assign(defense="rival", protection=0.7)
    stale_none = board[(board["track"] == "merge") & (board["defense"] == "none")].assign(protection=0.9)
    elsewhere = board[merge].assign(defense="other_zoo", protection=0.95, zoo_hash="another")
    ranks = rank_rows(board, "trap2", [("published", pd.concat([rival, stale_none, elsewhere]))])
    row = ranks.iloc[0]
    assert (row["track"], row["model"], row["release_format"]) == ("merge", "llama", "adapter") and len(ranks) == 1
    assert (row["rank"], row["ranked"], row["best_other"], row["best_other_protection"]) == (2, 3, "rival", 0.7)
    assert row["pool"] == "none (this run), rival (published), trap2 (this run)"
