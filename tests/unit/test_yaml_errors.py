"""A YAML file that does not parse is one error line with its file, line and column (exit 2), whether it is a
preset or a task YAML (a utility task or a document task), and no run directory is left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bench.commands.cli import app
from bench.presets import PresetError, load_preset, yaml_error_line

runner = CliRunner()
BROKEN_TASK = "task: my_task\ndataset_path: json\n  bad: [\n"  # line 3, column 6: a mapping value inside a scalar


def _run(tmp_path: Path, preset: Path) -> tuple[int, str, Path]:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--preset", str(preset), "--root", str(tmp_path / "root"), "--out", str(out)])
    return result.exit_code, result.output, out


def test_a_preset_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    preset = tmp_path / "broken.yaml"
    preset.write_text("extends: micro\nname: broken\ngrid:\n  seeds: [0\n  models: [llama]\n")
    with pytest.raises(PresetError) as caught:
        load_preset(str(preset))
    assert str(caught.value) == (f"preset {preset}:5:9: not valid YAML: expected ',' or ']', but got ':' "
                                 "(while parsing a flow sequence)")
    code, output, out = _run(tmp_path, preset)
    assert code == 2 and f"error: preset {preset}:5:9: not valid YAML" in output and not out.exists()
    assert len(output.strip().splitlines()) == 1


def test_a_utility_task_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text(BROKEN_TASK)
    preset = tmp_path / "ut.yaml"
    preset.write_text(f"extends: micro\nname: ut\ngrid:\n  utility_tasks: [{{name: my_task, lm_eval_yaml: {task}}}]\n")
    code, output, out = _run(tmp_path, preset)
    assert code == 2, output
    assert output.strip() == (f"error: utility_tasks: {task}:3:6: not valid YAML: mapping values are not allowed "
                              "in this context")
    assert not out.exists()


def test_a_document_task_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text(BROKEN_TASK)
    preset = tmp_path / "doc.yaml"
    preset.write_text(f"extends: micro\nname: doc\nzoo:\n  document_tasks:\n    mydoc: {{lm_eval_yaml: {task}}}\n"
                      "  downstream_tasks: [mydoc]\n")
    code, output, out = _run(tmp_path, preset)
    assert code == 2, output
    assert output.strip() == f"error: {task}:3:6: not valid YAML: mapping values are not allowed in this context"
    assert not out.exists(), "input that fails while the zoo is read leaves no run directory"


def test_the_line_falls_back_to_the_parsers_mark() -> None:
    with pytest.raises(yaml.YAMLError) as caught:
        yaml.safe_load("a: [1\n")
    assert yaml_error_line(caught.value, "x.yaml").startswith("x.yaml:2:1: not valid YAML: expected ',' or ']'")
    assert yaml_error_line(yaml.YAMLError("plain"), "x.yaml") == "x.yaml: not valid YAML: plain"
