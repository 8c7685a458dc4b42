"""DESIGN §6's validity rule: holds on the `ci` zoo, fails loudly on a deliberately broken one."""

from __future__ import annotations

import pytest

from bench.harness.context import get_context
from bench.presets import load_preset
from bench.validate import validate_zoo

pytestmark = pytest.mark.slow


def _validate(preset, root):
    ctx = get_context(preset, root)
    return validate_zoo(ctx.zoo, preset, ctx.tasks)


@pytest.fixture(scope="module")
def ci_reports(ci_root):
    return {report.model: report for report in _validate(load_preset("ci"), ci_root)}


GPT2_BELOW_THE_RULE = pytest.mark.xfail(strict=True, reason=(
    "measured 2026-12-01 on a fresh install: the GPT-2-style LoRA `upper` expert scores 0.245 against a base of "
    "0.010 (gain 0.235 < 0.3); the published default of 2026-11 had 0.43 against 0.045 under the same zoo hash. "
    "Six expert recipes did not lift the LoRA gain above 0.235 (issue 13 note); `default` publishes those cells "
    "as weak and the track as invalid instead"))


@pytest.mark.parametrize("model", ["llama", pytest.param("gpt2", marks=GPT2_BELOW_THE_RULE)])
def test_ci_zoo_is_valid(ci_reports, model):
    assert ci_reports[model].failures == []


def test_destructive_experts_break_the_rule(ci_root):
    """Experts at a destructive learning rate without replay break the rule, and the failure comes from
    the rule, not from a crash: every model and form names failing experts. (Not necessarily every task:
    `last`, a one-character skill, was measured to survive lr 3e-2 on Llama.)"""
    preset = load_preset("ci")
    broken_training = preset.zoo.expert_training.model_copy(update={"lr": 3e-2, "replay_fraction": 0.0})
    broken_lora = preset.zoo.lora.model_copy(
        update={"training": preset.zoo.lora.training.model_copy(update={"lr": 1e-1, "replay_fraction": 0.0})})
    models = {name: entry.model_copy(update={"expert_training": None, "lora": None})
              for name, entry in preset.zoo.models.items()}  # no per-architecture recipe escapes the breakage
    broken = preset.model_copy(update={"zoo": preset.zoo.model_copy(
        update={"expert_training": broken_training, "lora": broken_lora, "models": models})})
    reports = _validate(broken, ci_root)
    assert {report.model for report in reports} == set(preset.zoo.models)
    for report in reports:
        for form in ("full", "lora"):
            named = [task for task in broken.zoo.expert_tasks_of(report.model)
                     if any(f"{form} expert for {task} scores" in failure for failure in report.failures)]
            assert named, (report.model, form, report.failures)
