"""The fine-tuning attacks' optional Optuna search (bench.toolkit.search through attacks.common.run_sweep).

Fast: a one-layer Llama of hidden size 16 built here, the character tokenizer, a copy task of a dozen
rows, a few optimiser steps per trial, and scripted attacker-val scores instead of lm-eval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

import bench.toolkit.search as optuna_search
from bench.plugins import ATTACKS, AttackOutput, PublicView, TaskData
from bench.zoo.tokenizer import build_tokenizer
from bench.zoo.training import batch_loss, tokenise

TASK = "copy"
#: A small space: every trial trains 2–4 steps.
SPACE = {"search": "optuna", "trials": 5, "lr_range": [1e-4, 1e-2], "steps_choices": [2, 4], "warmup_choices": [0, 1]}


def _rows(count: int, offset: int) -> TaskData:
    words = ["".join(chr(97 + (offset + i * 7 + j * 3) % 26) for j in range(3)) for i in range(count)]
    return TaskData([f"{word}=" for word in words], words)


@pytest.fixture(scope="module")
def tiny() -> tuple[PreTrainedModel, Any]:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


def _view(tiny, score_val: Callable[[PreTrainedModel, list[str]], dict[str, float]], seed: int = 0) -> PublicView:
    model, tokenizer = tiny
    return PublicView(track="finetune", release_format="full", model_name="tiny", release=model, base=model,
                      tokenizer=tokenizer, task=TASK, attacker_train=_rows(12, 0), attacker_val=_rows(6, 5),
                      public_experts={}, public_experts_val={}, seed=seed, budget_fractions=[0.5, 1.0],
                      score_val=score_val)


def _attack(name: str, **config: Any) -> Any:
    cls = ATTACKS.get(name)
    return cls(cls.Config.model_validate({**SPACE, "batch_size": 4, **config}))


class ValLoss:
    """A real attacker-val objective (minus the loss on the val rows), counting its calls."""

    def __init__(self, tokenizer: Any) -> None:
        self.data, self.calls = tokenise(tokenizer, _rows(6, 5).prompts, _rows(6, 5).answers), 0

    def __call__(self, model: PreTrainedModel, tasks: list[str]) -> dict[str, float]:
        self.calls += 1
        with torch.no_grad():
            return {TASK: -float(batch_loss(model, self.data, torch.arange(6)))}


@pytest.fixture
def recorded_lrs(monkeypatch, tiny) -> list[float]:
    """Trials train nothing: the release stands in for every snapshot, and each trial's lr is recorded so
    a scripted objective can score the trial by it."""
    lrs: list[float] = []

    def fake_train(model, tokenizer, prompts, answers, settings, at_steps):
        lrs.append(settings.training.lr)
        return {step: model for step in at_steps}

    monkeypatch.setattr(optuna_search, "train_snapshots", fake_train)
    return lrs


def _state(output: AttackOutput) -> dict[float, dict[str, torch.Tensor]]:
    return {fraction: model.state_dict() for fraction, model in output.models.items()}


def test_optuna_study_runs_exactly_the_trial_budget(tiny) -> None:
    scores = ValLoss(tiny[1])
    output = _attack("lora_finetune", rank_choices=[2, 4]).run(_view(tiny, scores))
    knobs = output.knobs
    assert scores.calls == len(knobs["trials"]) == knobs["n_trials"] == 5
    assert [trial["number"] for trial in knobs["trials"]] == list(range(5))
    assert knobs["search"] == "optuna" and knobs["method"] == "lora"
    assert knobs["sweep_steps"] == sum(trial["steps"] for trial in knobs["trials"])
    chosen = max(knobs["trials"], key=lambda trial: trial["val"])
    assert (knobs["lr"], knobs["steps"], knobs["r"], knobs["warmup_steps"], knobs["val_score"]) == (
        chosen["lr"], chosen["steps"], chosen["r"], chosen["warmup_steps"], chosen["val"])
    assert 1e-4 <= knobs["lr"] <= 1e-2 and knobs["r"] in (2, 4) and knobs["warmup_steps"] in (0, 1)
    assert sorted(output.models) == [0.5, 1.0] and output.steps == knobs["steps"]
    assert output.examples == 12 and knobs["val_examples"] == 6
    # the reported final checkpoint is the one that scored val_score
    assert -float(batch_loss(output.models[1.0], scores.data, torch.arange(6))) == knobs["val_score"]


@pytest.mark.parametrize("name", ["lora_finetune", "full_finetune"])
def test_optuna_same_seed_gives_the_same_choice_and_weights(tiny, name: str) -> None:
    first = _attack(name).run(_view(tiny, ValLoss(tiny[1])))
    torch.manual_seed(1234)  # the global RNG state must not matter (LoRA draws A at random)
    second = _attack(name).run(_view(tiny, ValLoss(tiny[1])))
    assert first.knobs == second.knobs
    one, two = _state(first), _state(second)
    assert all(torch.equal(one[f][key], two[f][key]) for f in one for key in one[f])
    other_seed = _attack(name).run(_view(tiny, ValLoss(tiny[1]), seed=1))
    assert [t["lr"] for t in other_seed.knobs["trials"]] != [t["lr"] for t in first.knobs["trials"]]


def test_optuna_chooses_inside_the_lr_region_the_objective_prefers(tiny, recorded_lrs) -> None:
    peak = 3e-3  # the scripted attacker-val score falls off with log-distance from it

    def score_val(model: PreTrainedModel, tasks: list[str]) -> dict[str, float]:
        return {TASK: 1.0 - abs(math.log10(recorded_lrs[-1] / peak))}

    output = _attack("full_finetune", trials=12, lr_range=[1e-6, 1e-1]).run(_view(tiny, score_val))
    assert 1e-3 <= output.knobs["lr"] <= 1e-2, output.knobs["trials"]
    assert output.knobs["lr"] == max(recorded_lrs, key=lambda lr: -abs(math.log10(lr / peak)))


def test_optuna_ties_go_to_fewer_steps_then_lower_lr(tiny, recorded_lrs) -> None:
    output = _attack("lora_finetune", trials=6, rank_choices=[2, 4]).run(_view(tiny, lambda model, tasks: {TASK: 0.5}))
    trials = output.knobs["trials"]
    fewest = min(trial["steps"] for trial in trials)
    assert len({trial["steps"] for trial in trials}) > 1  # a real tie-break, not a single step count
    assert output.knobs["steps"] == fewest
    assert output.knobs["lr"] == min(trial["lr"] for trial in trials if trial["steps"] == fewest)


@pytest.mark.parametrize("bounds", [[1e-2, 1e-3], [1e-3, 1e-3], [0.0, 1e-3]])
def test_optuna_config_rejects_an_empty_lr_range(bounds: list[float]) -> None:
    with pytest.raises(ValidationError, match="lr_range"):
        ATTACKS.get("lora_finetune").Config.model_validate({"search": "optuna", "lr_range": bounds})


def test_optuna_config_rejects_settings_the_search_would_ignore() -> None:
    full, lora = ATTACKS.get("full_finetune").Config, ATTACKS.get("lora_finetune").Config
    with pytest.raises(ValidationError, match="rank_choices"):
        full.model_validate({"search": "optuna", "rank_choices": [4, 8]})
    with pytest.raises(ValidationError, match="lr: not read by search 'optuna'"):
        full.model_validate({"search": "optuna", "lr": [1e-3]})
    with pytest.raises(ValidationError, match="r: not read by search 'optuna'"):
        lora.model_validate({"search": "optuna", "r": 4})
    with pytest.raises(ValidationError, match="trials: not read by search 'grid'"):
        lora.model_validate({"trials": 4})
    with pytest.raises(ValidationError, match="warmup_choices"):
        full.model_validate({"search": "optuna", "steps_choices": [10, 40], "warmup_choices": [0, 10]})


def test_optuna_config_round_trips_and_leaves_grid_dumps_unchanged() -> None:
    lora = ATTACKS.get("lora_finetune").Config
    searched = lora.model_validate(SPACE)
    assert lora.model_validate_json(searched.model_dump_json()) == searched  # what the harness stores
    assert not {"lr", "steps", "r", "independent_runs"} & set(searched.model_dump())
    # a grid config dumps exactly the keys it had before Optuna existed, so its cell key is unchanged
    assert set(lora().model_dump()) == {"lr", "steps", "batch_size", "independent_runs", "r", "alpha"}
    assert lora.model_validate({"search": "grid", "lr": 1e-3, "steps": 5}).model_dump() == lora.model_validate(
        {"lr": 1e-3, "steps": 5}).model_dump()


def test_full_preset_holds_one_optuna_search_per_finetuning_attack() -> None:
    from bench.presets import load_preset

    grid = load_preset("full").grid
    assert grid is not None
    searched = {spec.display: ATTACKS.get(spec.name).Config.model_validate(spec.config)
                for spec in grid.finetune_attacks if spec.config.get("search") == "optuna"}
    assert set(searched) == {"lora_finetune_optuna", "full_finetune_optuna"}
    assert searched["lora_finetune_optuna"].optuna_space().rank_choices == (4, 8, 16)
    assert searched["full_finetune_optuna"].optuna_space().rank_choices is None
