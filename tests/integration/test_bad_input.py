"""Reliability (issue 8): bad input and failing plugins end with one `error:` line, the documented exit code
and no half-written result."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fault_plugins  # noqa: F401  (registers the fault plugins this module's runs name)
import pytest
from reliability_runs import (
    assert_no_csv,
    hidden,
    one_error_line,
    pretrained_dir,
    rel_data,
    run_args,
    run_cli,
    write_yaml,
    zoo_copy,
)

#: plumbing, not accuracy: scored by the double (tests/fakes), in-process and in subprocesses (reliability_runs.env)
pytestmark = pytest.mark.usefixtures("fake_scoring")


def _preset_case(mutate: Callable[[dict[str, Any]], Any]) -> Callable[[Any, Path], list[str]]:
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        data = rel_data(micro_preset)
        mutate(data)
        return ["--preset", str(write_yaml(data, tmp / "bad.yaml"))]
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


def _blocked_path(kind: str) -> Callable[[Any, Path], list[str]]:
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        (tmp / "a-file").write_text("not a directory")
        preset = write_yaml(rel_data(micro_preset), tmp / "rel.yaml")
        if kind == "out":
            return ["--preset", str(preset), "--out", str(tmp / "a-file" / "run")]
        return ["--preset", str(preset), "--root", str(tmp / "a-file")]
    return make


def _args(*extra: str, preset: bool = True) -> Callable[[Any, Path], list[str]]:
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        head = ["--preset", str(write_yaml(rel_data(micro_preset), tmp / "rel.yaml"))] if preset else []
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
    "missing-model-path": (pretrained_dir("missing"), 2, "is not a directory"),
    "pickle-only-model": (pretrained_dir("pickle"), 2, "pytorch_model.bin: pickle files, which lockbench never loads"),
    "custom-code-model": (pretrained_dir("custom-code"), 2, "trust_remote_code"),
    "truncated-user-weights": (pretrained_dir("truncated"), 2, "damaged weights"),
    "unwritable-out-dir": (_blocked_path("out"), 2, "cannot write to run directory"),
    "unwritable-storage-root": (_blocked_path("root"), 2, "Not a directory"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_ends_with_one_line_error_and_no_csv(case: str, micro_preset: Any, tmp_path: Path) -> None:
    """Rejected before any compute: one `error:` line and nothing else on stderr, exit 2, an untouched
    storage root, and no file in the run directory."""
    from typer.testing import CliRunner

    from bench.commands.cli import app

    make, code, expected = BAD_INPUTS[case]
    args = make(micro_preset, tmp_path)
    root, out = tmp_path / "root", tmp_path / "out"
    defaults = [] if "--root" in args else ["--root", str(root)]
    defaults += [] if "--out" in args else ["--out", str(out)]
    result = CliRunner().invoke(app, ["run", *args, *defaults])
    assert result.exit_code == code, f"{result.output}\n{result.exception!r}"
    line = one_error_line(result.stderr)
    assert result.stderr.strip() == line, f"more than the error line on stderr:\n{result.stderr}"
    assert expected in line, line
    assert not root.exists() or not any(root.rglob("*")), f"compute was spent: {sorted(root.rglob('*'))[:5]}"
    assert_no_csv(out)
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


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FAILING_PLUGINS))
def test_failing_plugin_ends_with_one_line_error(case: str, micro_preset: Any, reference: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """The grid runs; the plugin's cells are recorded as failed in complete CSVs (never cached), and the
    command ends with one error line naming the failure and exit 1."""
    from typer.testing import CliRunner

    from bench.commands.cli import app
    from bench.results import read_csv

    grid, count, total, expected = FAILING_PLUGINS[case]
    preset = write_yaml(rel_data(micro_preset, **{"finetune_attacks": [], **grid}), tmp_path / "failing.yaml")
    root, out = zoo_copy(reference[0], tmp_path / "root"), tmp_path / "out"
    result = CliRunner().invoke(app, run_args(preset, root, out))
    assert result.exit_code == 1, result.output
    line = one_error_line(result.stderr)
    assert line == result.stderr.strip().splitlines()[-1], "the error line comes last"
    assert f"{count} of {total} cells failed" in line and expected in line, line
    cells = read_csv(out / "cells.csv", "cells")  # complete and schema-valid, one row per cell
    assert len(cells) == total and (cells["status"] == "failed").sum() == count
    assert (cells.loc[cells["status"] == "failed", "defense"] != "control").all() or case.startswith("attack")
    if case.startswith("defense"):
        cached = [json.loads(path.read_text())["defense"] for path in (root / "cells").glob("*.json")]
        assert set(cached) <= {"control"}, "failed cells must not be cached (only the controls succeeded)"
    assert not hidden(out)


def test_describe_error_one_line_and_exit_codes() -> None:
    from pydantic import ValidationError

    from bench.commands.cli import describe_error
    from bench.config import ConfigError
    from bench.presets.grid import GridConfig

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

    from bench.commands.cli import app
    from bench.config import ConfigError

    preset = write_yaml(rel_data(micro_preset, defenses=[{"name": "nonee"}]), tmp_path / "bad.yaml")
    args = run_args(preset, tmp_path / "root", tmp_path / "out")
    plain = run_cli(args)
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip() == one_error_line(plain.stderr) and "did you mean 'none'" in plain.stderr
    for debug_args, value in ((["--debug"], "0"), ([], "1")):
        with monkeypatch.context() as patch:
            patch.setenv("LOCKBENCH_DEBUG", value)  # restored on exit, also after --debug has set it to 1
            result = CliRunner().invoke(app, [*debug_args, *args])
            assert result.exit_code != 0 and isinstance(result.exception, ConfigError), result.output
