"""The attack suite through the harness (split from tests/integration/test_attacks.py): what an attack sees (the public
view only, never a test score) and the validity check of a preset's attacks against `none`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import SMALL_ATTACK_CONFIGS

from bench.plugins import ATTACKS, PublicView
from bench.presets import Preset
from bench.presets.grid import GridConfig, PluginSpec


@dataclasses.dataclass
class Spy:
    """Records every lm-eval evaluation and whether it happened inside an attack's `run`."""

    calls: list[tuple[str, str, list[str]]] = dataclasses.field(default_factory=list)
    views: list[tuple[str, Any]] = dataclasses.field(default_factory=list)
    inside: str = ""


@pytest.fixture
def spy(monkeypatch) -> Iterator[Spy]:
    import lm_eval

    record = Spy()
    original = lm_eval.simple_evaluate

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        record.calls.append((record.inside or "harness", "", list(kwargs.get("tasks") or [])))
        return original(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", evaluate)
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        if not cls.__module__.startswith("attacks."):
            continue

        def run(self, view, _original=cls.run, _name=name):
            record.views.append((_name, view))
            record.inside = _name
            try:
                return _original(self, view)
            finally:
                record.inside = ""

        monkeypatch.setattr(cls, "run", run)
    yield record


@pytest.mark.slow
def test_attacks_see_only_the_public_view_and_never_score_test(micro_run_root: Path, micro_preset: Preset,
                                                               micro_ctx, spy: Spy, tmp_path: Path) -> None:
    """Through the harness: each searching attack gets a PublicView (no private or test field, attacker
    splits disjoint from test) and every lm-eval call inside `run` scores attacker_val, never test."""
    from bench.report.leaderboard import run_and_write

    grid = GridConfig(
        defenses=[PluginSpec(name="none")], models=["llama"], protected_tasks=["sort"], seeds=[0],
        merge_attacks=[PluginSpec(name=name, config=SMALL_ATTACK_CONFIGS[name]) for name in
                       ("adaptive_coefficient", "per_member", "merge_heal")],
        finetune_attacks=[PluginSpec(name="lora_finetune", config=SMALL_ATTACK_CONFIGS["lora_finetune"])])
    summary = run_and_write(micro_preset.model_copy(update={"grid": grid}), micro_run_root, tmp_path / "run")
    assert summary.failed == 0

    public_fields = {field.name for field in dataclasses.fields(PublicView)}
    assert not {name for name in public_fields if "private" in name or "test" in name}
    assert {name for name, _ in spy.views} == {"adaptive_coefficient", "per_member", "merge_heal", "lora_finetune"}
    tasks = micro_ctx.tasks
    for name, view in spy.views:
        assert type(view) is PublicView, name
        assert {field.name for field in dataclasses.fields(view)} == public_fields
        test_prompts = set(micro_ctx.split(view.task, "test").prompts)
        assert not test_prompts & (set(view.attacker_train.prompts) | set(view.attacker_val.prompts)), name

    test_names = {tasks.lm_eval_name(task, "test") for task in tasks.tasks}
    val_names = {tasks.lm_eval_name(task, "attacker_val") for task in tasks.tasks}
    inside = [call for call in spy.calls if call[0] != "harness"]
    assert {call[0] for call in inside} == {"adaptive_coefficient", "per_member", "lora_finetune"}
    for attack, _, names in inside:
        assert names and set(names) <= val_names, (attack, names)
        assert not set(names) & test_names, (attack, names)
    # The spy sees test scoring when it happens: the harness scores every attacked model on test.
    assert any(set(names) & test_names for phase, _, names in spy.calls if phase == "harness")


@pytest.mark.slow
def test_check_attacks_reports_each_attack_against_none(micro_run_root: Path, micro_preset: Preset,
                                                        tmp_path: Path) -> None:
    """`lockbench validate`'s attack stage: n/a cells are n/a, micro's ≈0 scores make attacks weak, and
    weak attacks fail validation unless the preset only warns about them."""
    from bench.commands.validate import attack_failures, check_attacks

    grid = GridConfig(defenses=[PluginSpec(name="none")], models=["llama"], protected_tasks=["sort"], seeds=[0],
                      merge_attacks=[PluginSpec(name="task_arithmetic"), PluginSpec(name="adapter_weighted")],
                      finetune_attacks=[])
    checks, problems, gaps = check_attacks(micro_preset.model_copy(update={"grid": grid}), micro_run_root,
                                           tmp_path / "v")
    status = {(check.attack, check.release_format): check.status for check in checks}
    assert status[("adapter_weighted", "full")] == "n/a"
    assert status[("task_arithmetic", "full")] == "weak" and status[("adapter_weighted", "adapter")] == "weak"
    assert all(check.cells == 1 and check.seconds_per_cell >= 0 for check in checks if check.status != "n/a")
    assert all(check.reasons for check in checks if check.status == "weak")  # the measured reason
    failures = attack_failures(checks, problems)
    assert len([f for f in failures if "is weak against none" in f]) == 3 and not any("n/a" in f for f in failures)
    assert problems and all("void on every input" in problem for problem in problems)
    assert not attack_failures(checks, problems, "warn")  # warn: reported loudly, published as invalid
    assert gaps and all("void on every input" in gap for gap in gaps)


