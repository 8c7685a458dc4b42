"""Bad input ends with a one-line error and a non-zero exit, before any compute is spent."""

from __future__ import annotations

from pathlib import Path

import pytest
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


@pytest.mark.slow
def test_validate_reuses_its_report_for_the_same_zoo_and_rule(micro_zoo, micro_preset, monkeypatch):
    """A re-run of `make bench` must not re-score an unchanged zoo; a changed rule must."""
    import bench.validate_cli as validate_cli

    calls: list[str] = []
    real = validate_cli.validate_zoo
    monkeypatch.setattr(validate_cli, "validate_zoo", lambda zoo, preset, tasks: calls.append(preset.name)
                        or real(zoo, preset, tasks))
    validity = micro_preset.validity.model_copy(update={"min_expert_gain": 0.301})
    preset = micro_preset.model_copy(update={"grid": None, "validity": validity})
    first = validate_cli.run_validate(preset, micro_zoo.root)
    assert validate_cli.run_validate(preset, micro_zoo.root) == first
    assert len(calls) == 1
    stricter = preset.model_copy(update={"validity": validity.model_copy(update={"min_expert_gain": 0.302})})
    validate_cli.run_validate(stricter, micro_zoo.root)
    assert len(calls) == 2


def test_a_hub_id_passes_the_input_check_only_with_the_hub_on(monkeypatch):
    """`pretrained: Qwen/Qwen2.5-0.5B` (the gpu preset) is a hub id, not a missing folder: refused with a
    clear line while offline, left to transformers (safetensors only) when the hub is on."""
    from bench.harness.grid import ConfigError
    from bench.harness.run import check_zoo_inputs
    from bench.presets import load_preset

    preset = load_preset("gpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=0"):
        check_zoo_inputs(preset)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_zoo_inputs(preset)
    local = preset.zoo.models["qwen"].model_copy(update={"pretrained": "./no/such-model"})
    missing = preset.model_copy(update={"zoo": preset.zoo.model_copy(update={"models": {"qwen": local}})})
    with pytest.raises(ConfigError, match="is not a directory"):
        check_zoo_inputs(missing)
