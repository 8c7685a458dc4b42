"""DESIGN §6's validity rule: holds on the `ci` zoo, fails loudly on a deliberately broken one."""

from __future__ import annotations

import pytest

from bench.presets import load_preset
from bench.validate import validate_zoo
from bench.zoo.build import build_zoo
from tasks import materialize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ci_root(tmp_path_factory):
    return tmp_path_factory.mktemp("ci-root")


def _validate(preset, root):
    zoo = build_zoo(preset.zoo, root)
    all_tasks = sorted(set(preset.zoo.expert_tasks) | set(preset.zoo.downstream_tasks))
    tasks = materialize(all_tasks, preset.zoo.seed, preset.zoo.split_sizes, root / "tasks" / zoo.hash)
    return validate_zoo(zoo, preset, tasks)


def test_ci_zoo_is_valid(ci_root):
    reports = _validate(load_preset("ci"), ci_root)
    failures = [failure for report in reports for failure in report.failures]
    assert failures == []
    assert {report.model for report in reports} == {"llama", "gpt2"}


def test_destructive_experts_break_the_rule(ci_root):
    """Experts at a destructive learning rate without replay forget everything: validation must say so."""
    preset = load_preset("ci")
    broken_training = preset.zoo.expert_training.model_copy(update={"lr": 3e-2, "replay_fraction": 0.0})
    broken_lora = preset.zoo.lora.model_copy(
        update={"training": preset.zoo.lora.training.model_copy(update={"lr": 1e-1, "replay_fraction": 0.0})})
    broken = preset.model_copy(update={"zoo": preset.zoo.model_copy(
        update={"expert_training": broken_training, "lora": broken_lora})})
    reports = _validate(broken, ci_root)
    failures = [failure for report in reports for failure in report.failures]
    assert failures, "a zoo of destroyed experts must fail validation"
    assert any("expert for" in failure or "merge attack" in failure for failure in failures)
