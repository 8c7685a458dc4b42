"""Where `lockbench submit` files, what the filed files may say, and its exit codes.

The acceptance test runs `submit` from a temporary folder outside the checkout, on a one-model slice of the
micro preset with the scorer double (plumbing, seconds): the filed files name the plugin by file name and
sha256 and hold no absolute path; filed into a checkout's leaderboard the submission is on its page, and
filed elsewhere the output says in one line how to rank it against the published runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from fakes import MICRO_LLAMA_PRESET
from typer.testing import CliRunner

import bench.commands.submit.place
from bench.commands.cli import app
from bench.zoo.build import Zoo

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
TINY_PRESET = MICRO_LLAMA_PRESET


def test_this_checkout_is_the_default_leaderboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert bench.commands.submit.place.checkout_of_package() == REPO
    placement = bench.commands.submit.place.place(None, None, "mine")
    assert placement.leaderboard_dir == REPO / "leaderboard" and placement.ranked_with_published
    assert placement.run_dir == REPO / "runs" / "submissions" / "mine"
    explicit = bench.commands.submit.place.place(Path("board"), Path("run"), "mine")
    assert (explicit.leaderboard_dir, explicit.run_dir) == (tmp_path / "board", tmp_path / "run")


def _submit_from(cwd: Path, defense: Path, preset: Path, root: Path, monkeypatch: pytest.MonkeyPatch,
                 *extra: str):
    monkeypatch.chdir(cwd)
    return runner.invoke(app, ["submit", str(defense), "--preset", str(preset), "--root", str(root),
                               "--allow-invalid", "--no-dry-run", *extra])


def _absolute_paths_in(folder: Path, paths: list[Path]) -> list[str]:
    found = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        found += [f"{file.name}: {path}" for path in paths if str(path).encode() in data]
    return found


@pytest.fixture(scope="module")
def defense_outside(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("outside")
    defense = tmp / "plugins" / "my_defense.py"
    defense.parent.mkdir()
    defense.write_text((REPO / "examples" / "noisy_release.py").read_text())
    preset = tmp / "micro-llama.yaml"
    preset.write_text(TINY_PRESET)
    return defense, preset


def test_submit_outside_a_checkout_files_no_path_and_says_how_to_rank(
        micro_zoo: Zoo, defense_outside: tuple[Path, Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch, fake_scoring: None) -> None:
    defense, preset = defense_outside
    monkeypatch.setattr(bench.commands.submit.place, "checkout_of_package", lambda: None)  # an installed lockbench
    result = _submit_from(tmp_path, defense, preset, Path(micro_zoo.root), monkeypatch)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "leaderboard" / "submissions" / "noisy_release"
    assert f"filed {folder}" in result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: filed in {folder}, outside any lockbench checkout, so it was ranked against no "
                     "published run; to rank it against them, rerun the same command with --leaderboard-dir "
                     "CHECKOUT/leaderboard (its cells are cached in the same storage root, so nothing is recomputed)"]
    assert (tmp_path / "runs" / "submissions" / "noisy_release" / "cells.csv").is_file()
    private = [tmp_path_factory.getbasetemp(), REPO, Path.home(), defense.parent]
    assert _absolute_paths_in(tmp_path / "leaderboard", private) == []
    readme = (folder / "README.md").read_text()
    digest = hashlib.sha256(defense.read_bytes()).hexdigest()
    assert f"- source: file my_defense.py (sha256 {digest})" in readme
    assert "- class: `NoisyRelease in my_defense.py`" in readme
    import json

    meta = json.loads((folder / "submission.json").read_text())
    assert meta["source"] == f"file my_defense.py (sha256 {digest})"


def test_submit_into_a_checkout_is_on_its_page(micro_zoo: Zoo, defense_outside: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, fake_scoring: None) -> None:
    from html_tables import parse

    defense, preset = defense_outside
    checkout = tmp_path / "checkout"
    for folder in (".git", "bench", "leaderboard"):
        (checkout / folder).mkdir(parents=True)
    monkeypatch.setattr(bench.commands.submit.place, "checkout_of_package", lambda: checkout)
    (tmp_path / "elsewhere").mkdir()
    result = _submit_from(tmp_path / "elsewhere", defense, preset, Path(micro_zoo.root), monkeypatch)
    assert result.exit_code == 0, result.output
    folder = checkout / "leaderboard" / "submissions" / "noisy_release"
    assert f"filed {folder}" in result.output and "note:" not in result.output
    assert not (tmp_path / "elsewhere" / "leaderboard").exists()
    page = parse((checkout / "leaderboard" / "index.html").read_text())
    assert {r["run"][0] for r in page.records("submissions")} == {"submissions/noisy_release"}


# ----------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize("problems, allow_invalid, failed, code, says", [
    ([], False, 0, 0, "filed "),
    (["merge track, llama: no attack is valid against 'none'"], True, 0, 0, "(marked NOT VALID)"),
    (["merge track, llama: no attack is valid against 'none'"], False, 0, 1, "nothing was filed"),
    ([], False, 1, 1, "1 of the submission's cells failed"),
])
def test_submit_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problems: list[str],
                           allow_invalid: bool, failed: int, code: int, says: str) -> None:
    """0 filed (a NOT VALID run too, when --allow-invalid waives the rule); 1 finished but not filed, or
    filed with failed cells; the mapping from the run's result to the code, without computing the run."""
    import bench.commands.submit.running as running

    def fake_run(submission, preset, root, run_dir, board, folder, executor, allow, salt):
        target = board / "submissions" / folder if (not problems or allow) else None
        return running.SubmitResult(submission, run_dir, target, 4, failed, list(problems), pd.DataFrame(
            columns=["track", "model", "release_format", "protection", "attack_success",
                     "utility_retention", "rank", "ranked"]))

    monkeypatch.setattr(running, "run_submission", fake_run)
    args = ["submit", str(REPO / "examples" / "noisy_release.py"), "--preset", "micro", "--no-dry-run",
            "--leaderboard-dir", str(tmp_path / "board"), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args + (["--allow-invalid"] if allow_invalid else []))
    assert result.exit_code == code, result.output
    assert says in result.output


def test_bad_submit_input_exits_2_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["submit", str(REPO / "examples" / "noisy_release.py"), "--config", "{oops",
                                 "--leaderboard-dir", str(tmp_path / "board")])
    assert result.exit_code == 2 and result.output.startswith("error: --config is not JSON")
    assert list(tmp_path.iterdir()) == []


def test_an_attacks_published_source_names_no_path(tmp_path: Path) -> None:
    from bench.commands.submit import class_name
    from bench.commands.submit_attack import prepare_attack

    attack = tmp_path / "deep" / "my_attack.py"
    attack.parent.mkdir()
    attack.write_text((REPO / "examples" / "scaled_merge.py").read_text())
    submission = prepare_attack(str(attack))
    digest = hashlib.sha256(attack.read_bytes()).hexdigest()
    assert submission.published_source == f"file my_attack.py (sha256 {digest})"
    assert class_name(submission) == "ScaledMerge in my_attack.py"
    assert str(attack) in submission.source, "the terminal still says where the file is"
