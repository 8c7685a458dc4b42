"""Bad input ends with a one-line error and a non-zero exit, before any compute is spent."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.commands.cli import app

runner = CliRunner()


def test_unknown_preset_suggests_the_closest_name():
    result = runner.invoke(app, ["validate", "--preset", "defualt"])
    assert result.exit_code == 2
    assert "did you mean 'default'" in result.output


def test_config_typo_names_the_bad_key(tmp_path):
    preset = tmp_path / "typo.yaml"
    micro = Path(__file__).resolve().parents[2] / "bench" / "presets" / "micro.yaml"
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
    import bench.commands.validate_cli as validate_cli

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
    from bench.config import ConfigError
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


# ----------------------------------------------------------------------------- the exit-code contract


def _cli(args: list[str]):
    return runner.invoke(app, args, prog_name="lockbench")


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_an_unknown_option_of_a_subcommand_is_one_line_with_that_subcommands_hint():
    result = _cli(["run", "--seed", "0"])
    assert result.exit_code == 2
    assert _error_lines(result.output) == ["error: lockbench run: no such option --seed (did you mean --seeds?)"]
    assert "Traceback" not in result.output
    other = _cli(["submit", "x.py", "--allow-invalidd"])
    assert other.exit_code == 2
    assert "did you mean --allow-invalid?" in other.output and "--seeds" not in other.output


def test_an_unknown_top_level_option_agrees_with_a_subcommands():
    result = _cli(["--bogus", "run"])
    assert result.exit_code == 2
    assert _error_lines(result.output) == ["error: lockbench: no such option --bogus; its options: --debug, --help"]
    close = _cli(["--debg", "run"])
    assert _error_lines(close.output) == ["error: lockbench: no such option --debg (did you mean --debug?)"]


@pytest.mark.parametrize("args, message", [
    (["list"], "error: lockbench list: Missing command."),
    (["submit"], "error: lockbench submit: Missing argument 'PLUGIN'."),
    (["run", "--cpus-per-task", "x"], "error: lockbench run: Invalid value for '--cpus-per-task'"),
])
def test_other_usage_errors_are_one_line_and_exit_2(args: list[str], message: str):
    result = _cli(args)
    assert result.exit_code == 2
    lines = _error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_bad_input_creates_no_run_directory(tmp_path: Path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("extends: micro\nname: bad\ngrid:\n  defenses: [{name: no_such_defense}]\n")
    out = tmp_path / "runs" / "bad"
    result = _cli(["run", "--preset", str(preset), "--out", str(out), "--root", str(tmp_path / "root")])
    assert result.exit_code == 2, result.output
    assert "unknown defense 'no_such_defense'" in result.output
    assert not out.exists() and not out.parent.exists()


def test_an_unwritable_run_directory_is_bad_input(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _cli(["run", "--preset", "micro", "--out", str(blocker / "run")])
    assert result.exit_code == 2
    assert f"cannot write to run directory {blocker / 'run'}: {blocker} is not a directory" in result.output


@pytest.mark.parametrize("failed, problems, flags, code", [
    (0, [], [], 0),
    (0, ["merge track, llama: no attack is valid against 'none'"], [], 1),
    (0, ["merge track, llama: no attack is valid against 'none'"], ["--strict"], 1),
    (0, ["merge track, llama: no attack is valid against 'none'"], ["--no-strict"], 0),
    (2, [], ["--no-strict"], 1),
])
def test_run_exit_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failed: int, problems: list[str],
                        flags: list[str], code: int):
    """0 success; 1 a finished run broke a declared rule (the validity rule, unless --no-strict) or lost
    cells (always); the mapping from the run's summary to the code, without computing the run."""
    import bench.report.leaderboard
    from bench.harness.run import RunSummary

    monkeypatch.setattr(bench.report.leaderboard, "run_and_write", lambda preset, root, out, executor, **kw: RunSummary(
        out, 20, failed, 0, 1.0, list(problems), "RuntimeError: boom" if failed else ""))
    result = _cli(["run", "--preset", "micro", "--out", str(tmp_path / "run"), *flags])
    assert result.exit_code == code, result.output
    if problems:
        label = "VALIDITY (not enforced: --no-strict)" if "--no-strict" in flags else "VALIDITY"
        assert f"{label}: {problems[0]}" in result.output
    if code == 1 and not failed:
        assert "error: the run broke the validity rule (above); --no-strict reports it without failing" in result.output


# ----------------------------------------------------------------------------- section-aware typo hints


@pytest.mark.parametrize("section, typo, hint", [
    ("grid", "seedz", "seeds"),
    ("grid", "seed", "seeds"),  # following a hint never loops back to a key of another section
    ("grid.defenses.0", "confg", "config"),
    ("zoo", "base_trainig", "base_training"),
    ("zoo.models.llama.architecture", "famly", "family"),
    ("validity.finetune_attacks.lora", "trainin", "training"),
])
def test_a_typo_hint_comes_from_its_own_sections_keys(tmp_path: Path, section: str, typo: str, hint: str):
    from bench.presets import section_keys

    keys = section_keys((*section.split("."), typo))
    assert hint in keys
    result = _cli(["validate", "--preset", _typo_preset(tmp_path, section, typo)])
    assert result.exit_code == 2
    assert f"unknown key '{section}.{typo}' (did you mean '{hint}'?)" in result.output


def test_a_typo_far_from_its_sections_keys_gets_no_hint_from_another_section(tmp_path: Path):
    """`zoo.models.llama.famly`: `family` is a key of the architecture, one level down, so no hint."""
    from bench.presets import section_keys

    assert "family" not in section_keys(("zoo", "models", "llama", "famly"))
    result = _cli(["validate", "--preset", _typo_preset(tmp_path, "zoo.models.llama", "famly")])
    assert "unknown key 'zoo.models.llama.famly'" in result.output and "did you mean" not in result.output


def test_the_hint_fields_are_the_models_own():
    from bench.presets import section_keys
    from bench.presets.grid import GridConfig

    assert section_keys(("grid", "x")) == sorted(GridConfig.model_fields)
    assert section_keys(("no_such_section", "x")) == []


_TYPO_YAML = {
    "grid": "grid:\n  {typo}: [0]\n",
    "grid.defenses.0": "grid:\n  defenses: [{{name: none, {typo}: {{}}}}]\n",
    "zoo": "zoo:\n  {typo}: {{}}\n",
    "zoo.models.llama.architecture": "zoo:\n  models:\n    llama:\n      architecture: {{{typo}: llama}}\n",
    "zoo.models.llama": "zoo:\n  models:\n    llama: {{{typo}: llama}}\n",
    "validity.finetune_attacks.lora": "validity:\n  finetune_attacks:\n    lora: {{{typo}: {{}}}}\n",
}


def _typo_preset(folder: Path, section: str, typo: str) -> str:
    path = folder / "typo.yaml"
    path.write_text("extends: micro\nname: typo\n" + _TYPO_YAML[section].format(typo=typo))
    return str(path)
