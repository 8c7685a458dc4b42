"""The attack suite (issue 5): merge attacks generated from mergekit's registry, adapter-space merging,
adaptive merging that searches on the attacker's own split only, and fine-tuning sweeps.

The micro zoo's models score ≈ 0, so tests here check plumbing and selection logic with scripted validation
scores. Elsewhere: mergekit-yaml equality (tests/system/test_merge_equivalence.py), the harness
(tests/integration/test_attacks_harness.py), the `default` suite on the ci zoo (tests/system/test_attacks_ci.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import SMALL_ATTACK_CONFIGS
from peft import PeftModel
from pydantic import ValidationError
from transformers import PreTrainedModel

from attacks.common import AttackNotApplicable, MergeInputs
from attacks.mergekit_methods import MERGE_ATTACKS, SKIPPED_METHODS
from bench.harness.grid import expand
from bench.plugins import ATTACKS, Attack, PublicView
from bench.presets import Preset, load_preset, preset_names
from bench.presets.grid import GridConfig, PluginSpec
from bench.toolkit.merging import layout_for, method_spec

BIN = Path(sys.executable).parent
#: What DESIGN §4 names; each must exist as a registry-generated attack.
NAMED_METHODS = {"task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
                 "della_linear", "linear", "model_stock", "sce", "slerp"}
MERGE_KNOBS = {"method", "weights", "normalize", "lambda", "density", "rescale", "seed"}


# ----------------------------------------------------------------------------- registry and presets (fast)


def test_every_registry_method_is_an_attack_or_skipped_for_a_reason() -> None:
    from mergekit.merge_methods import registered_methods

    registered = {method.spec.name for method in registered_methods()}
    assert registered == set(MERGE_ATTACKS) | set(SKIPPED_METHODS)
    assert NAMED_METHODS <= set(MERGE_ATTACKS)
    assert set(SKIPPED_METHODS) == {"passthrough"}, SKIPPED_METHODS  # one input only: nothing to merge
    for name, cls in MERGE_ATTACKS.items():
        assert ATTACKS.get(name) is cls and cls.track == "merge"
        fields = {info.alias or field for field, info in cls.Config.model_fields.items()}
        assert fields == {parameter.name for parameter in method_spec(name).parameters}, name
        assert cls.default_grid, name
        for entry in cls.default_grid:
            cls.Config.model_validate(entry)
    with pytest.raises(ValidationError):
        ATTACKS.get("ties").Config.model_validate({"densty": 0.5})
    assert MERGE_ATTACKS["slerp"].member_counts == (2,) and MERGE_ATTACKS["model_stock"].member_counts[0] == 2
    assert (layout_for("slerp", 2), layout_for("slerp", 3)) == ("anchor", None)
    assert (layout_for("ties", 4), layout_for("linear", 4), layout_for("nuslerp", 2)) == ("base", "members", "base")


def test_lockbench_list_attacks_shows_one_line_descriptions() -> None:
    from typer.testing import CliRunner

    from bench.commands.cli import app

    result = CliRunner().invoke(app, ["list", "attacks"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in ATTACKS.names():
        description = ATTACKS.get(name).description
        assert description and "\n" not in description
        assert any(line.startswith(f"{name} ") and description in line for line in lines), name
    for name in ("adaptive_coefficient", "per_member", "merge_heal", "adapter_weighted", "lora_finetune",
                 "full_finetune", *NAMED_METHODS):
        assert name in ATTACKS.names()


def _expand(preset: Preset):
    assert preset.grid is not None
    return expand(preset.grid, {model: preset.zoo.expert_tasks_of(model) for model in preset.zoo.models},
                  list(preset.zoo.downstream_tasks))


@pytest.mark.parametrize("name", sorted(preset_names()))  # every packaged preset
def test_preset_grids_validate_and_never_repeat_a_member(name: str) -> None:
    """Every attack config validates, and no cell merges a task's own expert back in (n_members larger
    than the zoo's expert tasks would wrap around to the protected task)."""
    preset = load_preset(name)
    cells = _expand(preset)
    assert cells
    for cell in cells:
        assert cell.task not in cell.members and len(set(cell.members)) == len(cell.members), (name, cell)


def test_default_and_full_presets_hold_the_attack_suite() -> None:
    default, full = load_preset("default"), load_preset("full")
    assert default.grid is not None and full.grid is not None
    names = {spec.name for spec in default.grid.merge_attacks + default.grid.finetune_attacks}
    assert {"per_member", "merge_heal", "lora_finetune", "full_finetune"} <= names
    # adaptive_coefficient is weak on the GPT-2-style zoo (ci.yaml), so it runs in `full` and `smoke` only
    assert "adaptive_coefficient" in {spec.name for spec in full.grid.merge_attacks}
    assert 2 in default.grid.n_members and {2, 3} <= set(full.grid.n_members)
    # DESIGN §4: an lr × steps sweep. `full` keeps three rates; `default` dropped the lowest, which was only
    # ever picked in a tie with the next rate (measured, bench/presets/default.yaml), and keeps a sweep.
    for preset, rates in ((default, 2), (full, 3)):
        for spec in preset.grid.finetune_attacks:
            config = ATTACKS.get(spec.name).Config.model_validate(spec.config)
            assert len(config.lr) >= rates and len(config.steps) >= 2, (preset.name, spec)
    in_full = {(spec.name, json.dumps(ATTACKS.get(spec.name).Config.model_validate(spec.config).model_dump(
        mode="json", by_alias=True), sort_keys=True)) for spec in full.grid.merge_attacks + full.grid.finetune_attacks}
    builtin = {name for name in ATTACKS.names() if ATTACKS.get(name).__module__.startswith("attacks.")}
    assert builtin <= {name for name, _ in in_full}  # other test modules register their own fakes
    for name, cls in MERGE_ATTACKS.items():  # full expands every method's default grid
        for entry in cls.default_grid:
            key = json.dumps(cls.Config.model_validate(entry).model_dump(mode="json", by_alias=True), sort_keys=True)
            assert (name, key) in in_full, (name, entry)


def test_sweep_configs_take_a_single_value_as_a_sweep_of_one() -> None:
    config = ATTACKS.get("lora_finetune").Config.model_validate({"lr": 2e-3, "steps": 200})
    assert (config.lr, config.steps) == ([2e-3], [200])
    with pytest.raises(ValidationError):
        ATTACKS.get("full_finetune").Config.model_validate({"lr": [-1.0]})
    with pytest.raises(ValidationError):
        ATTACKS.get("adaptive_coefficient").Config.model_validate({"method": "slerp"})  # no weight to search


# ----------------------------------------------------------------------------- micro zoo


class ScriptedScores:
    """A stand-in for view.score_val returning scripted values in call order, recording what it saw."""

    def __init__(self, values: list[float]):
        self.values, self.calls = list(values), []

    def __call__(self, model: Any, task_names: list[str]) -> dict[str, float]:
        self.calls.append((model, list(task_names)))
        value = self.values[len(self.calls) - 1]
        return dict.fromkeys(task_names, value)


def _view(ctx, release_format: str = "full", track: str = "merge", experts: dict[str, str] | None = None,
          score_val: Callable | None = None, fractions: list[float] | None = None) -> PublicView:
    """A public view of llama's micro zoo: merge track protects `sort`; `experts` maps member name → task
    whose expert plays it (a second name for one expert gives a third member on a two-expert zoo)."""

    zoo, tokenizer = ctx.zoo, ctx.zoo.tokenizer("llama")
    load = zoo.load_expert if release_format == "full" else zoo.load_lora_expert
    task = "sort" if track == "merge" else "successor"
    experts = experts if experts is not None else ({"max": "max"} if track == "merge" else {})
    return PublicView(
        track=track, release_format=release_format if track == "merge" else "full", model_name="llama",
        release=load("llama", "sort") if track == "merge" else zoo.load_base("llama"),
        base=zoo.load_base("llama"), tokenizer=tokenizer, task=task,
        attacker_train=ctx.split(task, "attacker_train"), attacker_val=ctx.split(task, "attacker_val"),
        public_experts={name: load("llama", source) for name, source in experts.items()},
        public_experts_val={name: ctx.split(name, "attacker_val") for name in experts},
        public_experts_train={name: ctx.split(name, "attacker_train") for name in experts}, seed=0,
        budget_fractions=fractions or [0.5, 1.0], score_val=score_val or ctx.scorer.attacker_val(tokenizer))


#: Attacks that declare a release format they do not apply to (AttackNotApplicable there, recorded n/a).
NOT_APPLICABLE = {("adapter_weighted", "full"), ("align_to_base", "adapter")}


def _config(cls: type[Attack]):
    entry = SMALL_ATTACK_CONFIGS.get(cls.name, (getattr(cls, "default_grid", None) or [{}])[0])
    return cls.Config.model_validate(entry)


def _assert_plain_copy_of(model: Any, base: PreTrainedModel) -> None:
    assert isinstance(model, PreTrainedModel) and not isinstance(model, PeftModel)
    state = model.state_dict()
    assert set(state) == set(base.state_dict())
    assert all(torch.isfinite(tensor).all() for tensor in state.values() if tensor.is_floating_point())


@pytest.mark.slow
def test_every_registered_attack_runs_on_the_micro_zoo(micro_ctx) -> None:
    """Each attack (its default config, searches shortened) on a full and an adapter release of llama."""
    ran = []
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        if not cls.__module__.startswith("attacks."):
            continue  # other test files' plugins (their module names depend on how pytest imports them)
        for release_format in ("full", "adapter") if cls.track == "merge" else ("full",):
            # scripted validation scores: lm-eval on attacker_val is exercised through the harness below
            view = _view(micro_ctx, release_format, cls.track, score_val=ScriptedScores([0.0] * 50))
            attack = cls(_config(cls))
            if (name, release_format) in NOT_APPLICABLE:
                with pytest.raises(AttackNotApplicable):
                    attack.run(view)
                continue
            output = attack.run(view)
            expected = [1.0] if cls.track == "merge" else view.budget_fractions
            assert sorted(output.models) == expected, name
            for model in output.models.values():
                _assert_plain_copy_of(model, view.base)
            if cls.track == "merge":
                assert MERGE_KNOBS <= set(output.knobs), (name, output.knobs)
                assert output.knobs["seed"] == view.seed
            else:
                assert {"method", "lr", "steps"} <= set(output.knobs) and output.steps > 0 and output.examples > 0
            ran.append((name, release_format))
    assert len({name for name, _ in ran}) == len([n for n in ATTACKS.names()
                                                 if ATTACKS.get(n).__module__.startswith("attacks.")])


@pytest.mark.slow
def test_member_count_limits_are_not_applicable_not_crashes(micro_ctx) -> None:
    """Three models: the two-input methods are n/a, the others merge all three."""
    view = _view(micro_ctx, experts={"max": "max", "upper": "max"}, score_val=ScriptedScores([0.0] * 50))
    for cls in MERGE_ATTACKS.values():
        attack = cls(_config(cls))
        if 3 in cls.member_counts:
            _assert_plain_copy_of(attack.run(view).models[1.0], view.base)
        else:
            with pytest.raises(AttackNotApplicable, match="cannot merge 3 models"):
                attack.run(view)


@pytest.mark.slow
def test_peft_cat_combination_equals_task_arithmetic_of_the_folded_adapters(micro_ctx) -> None:
    """peft's exact combination in adapter space and mergekit's task arithmetic on folded weights agree."""
    view = _view(micro_ctx, "adapter")
    in_adapter_space = ATTACKS.get("adapter_weighted")().run(view).models[1.0].state_dict()
    folded = ATTACKS.get("task_arithmetic")().run(view).models[1.0].state_dict()
    base = view.base.state_dict()
    assert any(not torch.allclose(folded[name], base[name]) for name in base), "the adapters change nothing"
    for name in base:
        torch.testing.assert_close(in_adapter_space[name], folded[name], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_adaptive_coefficient_stops_early_then_searches_density(micro_ctx) -> None:
    """Ascending coefficients until `patience` score below the best (ties are no misses), then densities."""
    scores = ScriptedScores([0.2, 0.2, 0.4, 0.6, 0.5, 0.55, 0.7, 0.65])  # 6 coefficients, then 2 densities
    view = _view(micro_ctx, score_val=scores)
    config = {"coefficients": [0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 9.9], "patience": 2, "densities": [0.5, 0.9],
              "objective": "all"}
    output = ATTACKS.get("adaptive_coefficient")(
        ATTACKS.get("adaptive_coefficient").Config.model_validate(config)).run(view)
    trace = output.knobs["trace"]
    assert [(t["weight"], t["density"]) for t in trace] == [(0.1, 1.0), (0.5, 1.0), (1.0, 1.0), (2.0, 1.0),
                                                             (4.0, 1.0), (8.0, 1.0), (2.0, 0.5), (2.0, 0.9)]
    assert (output.knobs["weights"], output.knobs["density"], output.knobs["val_score"]) == (2.0, 0.5, 0.7)
    assert all(tasks == ["sort", "max"] for _, tasks in scores.calls)  # objective "all": T_p and the member
    assert output.examples == len(view.attacker_val.prompts) + len(view.public_experts_val["max"].prompts)
    expected = MergeInputs.from_view(view).merge("dare_ties", {"weight": 2.0, "density": 0.5, "normalize": False})
    chosen = output.models[1.0].state_dict()
    assert all(torch.equal(chosen[k], v) for k, v in expected.state_dict().items()), "returned model ≠ chosen merge"


@pytest.mark.slow
def test_per_member_pins_the_release_and_searches_each_member(micro_ctx) -> None:
    """Shared weight for both others first, then one coordinate pass per member; repeats are not re-scored."""
    scores = ScriptedScores([0.1, 0.3, 0.2, 0.4, 0.35, 0.45])
    view = _view(micro_ctx, experts={"max": "max", "upper": "max"}, score_val=scores)
    config = ATTACKS.get("per_member").Config.model_validate({"weights": [0.5, 1.0, 2.0], "refine": True})
    output = ATTACKS.get("per_member")(config).run(view)
    assert [tuple(t["weights"].values()) for t in output.knobs["trace"]] == [
        (0.5, 0.5), (1.0, 1.0), (2.0, 2.0),  # shared: 1.0 best
        (0.5, 1.0), (2.0, 1.0),              # max: 0.5 best ((1.0, 1.0) already seen)
        (0.5, 2.0),                          # upper: 2.0 best ((0.5, 0.5) and (0.5, 1.0) seen)
    ]
    assert output.knobs["weights"] == {"release": 1.0, "expert:max": 0.5, "expert:upper": 2.0}
    assert output.knobs["evaluations"] == len(scores.calls) == 6 and output.knobs["val_score"] == 0.45
    assert output.knobs["normalize"] is False  # normalising would re-scale the pinned release
    assert all(tasks == ["sort", "max", "upper"] for _, tasks in scores.calls)


@pytest.mark.slow
def test_finetune_sweep_chooses_on_attacker_val_and_keeps_its_checkpoints(micro_ctx) -> None:
    # trials run lr-major: (1e-4, 2) (1e-4, 4) (1e-3, 2) (1e-3, 4) (1e-2, 2) (1e-2, 4)
    scores = ScriptedScores([0.1, 0.5, 0.2, 0.9, 0.3, 0.4])
    view = _view(micro_ctx, track="finetune", score_val=scores, fractions=[0.25, 0.5, 1.0])
    config = ATTACKS.get("full_finetune").Config.model_validate({"lr": [1e-2, 1e-4, 1e-3], "steps": [4, 2]})
    output = ATTACKS.get("full_finetune")(config).run(view)
    assert (output.knobs["lr"], output.knobs["steps"], output.steps) == (1e-3, 4, 4)
    assert [(t["lr"], t["steps"]) for t in output.knobs["trials"]] == [
        (1e-4, 2), (1e-4, 4), (1e-3, 2), (1e-3, 4), (1e-2, 2), (1e-2, 4)]
    assert output.knobs["sweep_steps"] == 12  # one 4-step run per lr, stopped early at 2 as well
    assert output.examples == len(view.attacker_train.prompts)
    assert sorted(output.models) == [0.25, 0.5, 1.0]
    scored = scores.calls[3][0].state_dict()
    assert all(torch.equal(output.models[1.0].state_dict()[k], v) for k, v in scored.items())
    first, last = output.models[0.25].state_dict(), output.models[1.0].state_dict()
    assert any(not torch.equal(first[k], last[k]) for k in first), "checkpoints along the run are identical"
    assert all(tasks == ["successor"] for _, tasks in scores.calls)

    # A full-length candidate of the shared runs is exactly the independent run of that length.
    independent = ATTACKS.get("full_finetune")(config.model_copy(update={"independent_runs": True})).run(
        _view(micro_ctx, track="finetune", score_val=ScriptedScores([0.1, 0.5, 0.2, 0.9, 0.3, 0.4]),
              fractions=[0.25, 0.5, 1.0]))
    assert independent.knobs["sweep_steps"] == 18 and (independent.knobs["lr"], independent.knobs["steps"]) == (1e-3, 4)
    assert all(torch.equal(independent.models[1.0].state_dict()[k], v) for k, v in last.items())


@pytest.mark.slow
def test_merge_heal_trains_the_merge_within_its_budget(micro_ctx) -> None:
    view = _view(micro_ctx, "adapter")
    output = ATTACKS.get("merge_heal")(ATTACKS.get("merge_heal").Config.model_validate({"steps": 3})).run(view)
    merged = ATTACKS.get("task_arithmetic")().run(view).models[1.0].state_dict()
    healed = output.models[1.0].state_dict()
    assert (output.steps, output.examples) == (3, len(view.attacker_train.prompts))
    assert output.knobs["heal_steps"] == 3 and output.knobs["method"] == "task_arithmetic"
    assert any(not torch.allclose(healed[k], merged[k]) for k in merged), "healing changed nothing"


def test_a_model_can_override_the_zoos_expert_tasks() -> None:
    """GPT-2-style ci experts replace `last` by `dup`: its merges pair within its own list, and a protected
    task that one model lacks is an error naming that model."""
    from bench.config import ConfigError

    preset = load_preset("ci")
    assert preset.zoo.expert_tasks_of("llama") == ["length", "upper", "last"]
    assert preset.zoo.expert_tasks_of("gpt2") == ["length", "upper", "dup"]
    assert preset.zoo.all_expert_tasks() == ["length", "upper", "last", "dup"]
    assert preset.zoo.recipe("gpt2").expert_tasks == ["length", "upper", "dup"]
    members = {(cell.defense.model, task) for cell in _expand(preset) if cell.defense.track == "merge"
               for task in (cell.task, *cell.members)}
    assert ("gpt2", "dup") in members and ("gpt2", "last") not in members and ("llama", "dup") not in members
    grid = GridConfig(defenses=[PluginSpec(name="none")], protected_tasks=["last"], seeds=[0],
                      merge_attacks=[PluginSpec(name="task_arithmetic")], finetune_attacks=[])
    with pytest.raises(ConfigError, match="not expert tasks of zoo model 'gpt2'"):
        expand(grid, {m: preset.zoo.expert_tasks_of(m) for m in preset.zoo.models}, ["shift"])


def test_coefficient_search_stopping_rule_and_selection_by_hand() -> None:
    """Trap²'s shared-coefficient search on a made-up validation curve: ties are no misses, a new best resets
    the count, and the search stops at the patience-th score below the best, before a later higher peak."""
    from attacks.adaptive_coefficient import search_coefficient

    curve = {0.1: 0.2, 0.25: 0.2, 0.5: 0.5, 1.0: 0.4, 1.5: 0.45, 2.0: 0.55, 3.0: 0.3, 5.0: 0.1, 9.9: 0.9}
    tried: list[float] = []

    def trial(weight: float) -> tuple[float, str]:
        tried.append(weight)
        return curve[weight], f"model@{weight}"

    weight, (value, model) = search_coefficient(list(curve), 2, trial)
    # 0.25 ties 0.1 (no miss); 0.5 is a new best; 1.0 (0.4) and 1.5 (0.45) are misses 1 and 2: stop there
    assert tried == [0.1, 0.25, 0.5, 1.0, 1.5] and (weight, value, model) == (0.5, 0.5, "model@0.5")
    tried.clear()
    weight, (value, _) = search_coefficient(list(curve), 3, trial)
    # patience 3: 2.0 (0.55) is a new best after two misses and resets the count; 3.0 and 5.0 are misses 1
    # and 2, so 9.9 is still tried, and its 0.9 wins
    assert tried == list(curve) and (weight, value) == (9.9, 0.9)


def test_normalised_selection_criterion_by_hand() -> None:
    """Trap²'s criterion: mean over the tasks of merged / own-model accuracy on the validation split."""
    from attacks.common import normalised_mean

    scores, references = {"add": 0.4, "sort": 0.3}, {"add": 0.8, "sort": 0.6}
    assert normalised_mean(scores, references) == pytest.approx((0.4 / 0.8 + 0.3 / 0.6) / 2)
    # the raw mean cannot tell (0.6, 0.1) from (0.2, 0.5) (0.35 both); the normalised one prefers the merge that
    # keeps more of the harder task: (0.25 + 0.833) / 2 = 0.54 against (0.75 + 0.167) / 2 = 0.46
    assert (0.6 + 0.1) / 2 == (0.2 + 0.5) / 2
    assert normalised_mean({"add": 0.2, "sort": 0.5}, references) > normalised_mean({"add": 0.6, "sort": 0.1}, references)
    assert normalised_mean({"add": 0.2}, {"add": 0.0}) == 0.2, "no gain to normalise by: the raw score"


@pytest.mark.slow
def test_adaptive_coefficient_selects_on_normalised_accuracy(micro_ctx) -> None:
    """objective `normalised` first measures the release (T_p) and each expert (its task) on the validation
    split, then ranks merges by the mean of merged / own-model accuracy: here it picks the coefficient the
    raw mean would not."""
    script = [{"sort": 0.8}, {"max": 0.4},                      # references: release on sort, expert on max
              {"sort": 0.6, "max": 0.1}, {"sort": 0.2, "max": 0.4}]  # coefficients 0.5, 1.0

    class PerTask(ScriptedScores):
        def __call__(self, model: Any, task_names: list[str]) -> dict[str, float]:
            self.calls.append((model, list(task_names)))
            return {task: self.values[len(self.calls) - 1][task] for task in task_names}

    scores = PerTask(script)  # type: ignore[arg-type]
    view = _view(micro_ctx, score_val=scores)
    config = {"method": "task_arithmetic", "coefficients": [0.5, 1.0], "patience": 2, "objective": "normalised"}
    cls = ATTACKS.get("adaptive_coefficient")
    output = cls(cls.Config.model_validate(config)).run(view)
    assert [tasks for _, tasks in scores.calls] == [["sort"], ["max"], ["sort", "max"], ["sort", "max"]]
    assert scores.calls[0][0] is view.release and scores.calls[1][0] is view.public_experts["max"]
    # normalised: (0.6/0.8 + 0.1/0.4)/2 = 0.5 at 0.5, (0.2/0.8 + 0.4/0.4)/2 = 0.625 at 1.0 (raw: 0.35 vs 0.30)
    assert output.knobs["weights"] == 1.0 and output.knobs["val_score"] == pytest.approx(0.625)


def test_multitask_heal_trains_on_every_members_attacker_rows_and_nothing_else(micro_ctx) -> None:
    """The heal's data is T_p's attacker_train and each member's attacker_train (never val or test rows)."""
    from attacks.multitask_heal import heal_data

    view = _view(micro_ctx)
    prompts, answers = heal_data(view)
    expected = [*view.attacker_train.prompts, *view.public_experts_train["max"].prompts]
    assert prompts == expected and len(answers) == len(prompts)
    held_out = {*view.attacker_val.prompts, *micro_ctx.split("sort", "test").prompts,
                *micro_ctx.split("max", "test").prompts, *view.public_experts_val["max"].prompts}
    assert not held_out & set(prompts)
