"""The zoo check of `lockbench validate` scores as the harness's workers do (trimmed lm-eval), in parts that
run on Ray beside the validation run, and `lockbench run --validate` validates and runs on one cluster:
the same numbers in every way, and the exit codes of `validate && run`."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bench.commands.validate import validate_zoo, zoo_parts
from bench.harness.context import get_context, lm_eval_untrimmed


@pytest.fixture(scope="module")
def zoo_only(micro_preset):
    """micro without its grid: the zoo check then fine-tunes the base itself (no grid attack does it)."""
    return micro_preset.model_copy(update={"grid": None})


@pytest.fixture(scope="module")
def micro_untrimmed(micro_zoo, zoo_only):
    ctx = get_context(zoo_only, micro_zoo.root)
    with lm_eval_untrimmed():
        return [report.to_json() for report in validate_zoo(ctx.zoo, zoo_only, ctx.tasks)]


def test_the_parts_cover_every_check(micro_preset, zoo_only):
    assert zoo_parts(zoo_only, ["llama", "gpt2"]) == [
        ("llama", None, None), ("llama", "successor", "lora"), ("gpt2", None, None), ("gpt2", "successor", "lora")]
    # with grid fine-tuning attacks, validation judges those against none, one by one: no second fine-tune
    assert zoo_parts(micro_preset, ["llama", "gpt2"]) == [("llama", None, None), ("gpt2", None, None)]


@pytest.mark.slow  # lm-eval untrimmed: about a second a call (its environment block runs `pip list`)
def test_trimmed_zoo_check_gives_the_untrimmed_numbers(micro_zoo, zoo_only, micro_untrimmed):
    ctx = get_context(zoo_only, micro_zoo.root)
    reports = [report.to_json() for report in validate_zoo(ctx.zoo, zoo_only, ctx.tasks)]
    assert reports == micro_untrimmed
    assert [report["model"] for report in reports] == ["llama", "gpt2"]
    assert all(report["finetunes"] and report["merges"] for report in reports)


@pytest.mark.slow
def test_zoo_check_on_ray_gives_the_serial_numbers_on_one_cluster(micro_zoo, zoo_only, micro_untrimmed):
    """The parts on Ray's workers, then a second use of the cluster: a `ray_session` keeps it between steps."""
    import ray

    from bench.commands.validate_cli import gather_zoo_parts, submit_zoo_parts
    from bench.harness.cluster import ray_session, stop_local_ray

    with ray_session():
        pending = submit_zoo_parts(zoo_only, micro_zoo.root, ["llama", "gpt2"])
        stop_local_ray()  # what an executor's shutdown calls: the session keeps the cluster
        assert ray.is_initialized()
        reports = [report.to_json() for report in gather_zoo_parts(zoo_only, pending)]
    assert not ray.is_initialized()
    assert reports == micro_untrimmed


def _run(*args: str):
    from bench.commands.cli import app

    return CliRunner().invoke(app, ["run", *args])


def test_run_validate_stops_before_the_run_when_validation_fails(micro_zoo, tmp_path):
    """micro's zoo always breaks the rule: `run --validate` exits 1 like `validate` and runs nothing."""
    out = tmp_path / "run"
    result = _run("--validate", "--preset", "micro", "--root", str(micro_zoo.root), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert "VALIDITY RULE FAILED" in result.output
    assert not (out / "cells.csv").exists()


def test_run_validate_checks_its_input_first(micro_zoo, tmp_path):
    result = _run("--validate", "--preset", "no-such-preset", "--root", str(micro_zoo.root), "--out", str(tmp_path))
    assert result.exit_code == 2
    result = _run("--validate", "--preset", "micro", "--executor", "dask", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and not (tmp_path / "x").exists()
