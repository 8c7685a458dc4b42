"""Bad input ends with a one-line error and a non-zero exit, before any compute is spent."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bench.cli import app

runner = CliRunner()


def test_unknown_preset_suggests_the_closest_name():
    result = runner.invoke(app, ["validate", "--preset", "defualt"])
    assert result.exit_code == 2
    assert "did you mean 'default'" in result.output


def test_config_typo_names_the_bad_key(tmp_path):
    preset = tmp_path / "typo.yaml"
    micro = Path(__file__).resolve().parents[1] / "bench" / "presets" / "micro.yaml"
    preset.write_text(micro.read_text()
                      .replace("base_training:", "base_trainig:"))
    result = runner.invoke(app, ["run", "--preset", str(preset)])
    assert result.exit_code == 2
    assert "unknown key 'zoo.base_trainig' (did you mean 'base_training'?)" in result.output


def test_unknown_executor_is_refused():
    result = runner.invoke(app, ["run", "--preset", "micro", "--executor", "dask"])
    assert result.exit_code == 2
    assert "unknown executor" in result.output


def test_lists_show_the_reference_plugins():
    assert "task_arithmetic" in runner.invoke(app, ["list", "attacks"]).output
    assert "lora_finetune" in runner.invoke(app, ["list", "attacks"]).output
    assert "none" in runner.invoke(app, ["list", "defenses"]).output
    assert "default" in runner.invoke(app, ["list", "presets"]).output
