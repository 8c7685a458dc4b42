"""An Optuna search over fine-tuning configurations, chosen on the attacker's own validation split.

The grid sweep (`bench.toolkit.finetuning.sweep`) tries every (lr, steps); once the space also spans the LoRA
rank and the warm-up, a grid grows too large, so the attacker spends a fixed budget of trials on a TPE
search instead (DESIGN §4). It stays an attacker that chooses on its own split: each trial trains from
the release and is scored by `evaluate`, and only the chosen trial's budget-fraction checkpoints are
reported.

A cell must be reproducible, so one study runs per call, in memory, single-threaded, with a TPE sampler
seeded by the cell's seed, and every trial re-seeds torch from that seed: a trial's weights depend on its
parameters and the seed only, never on which trials ran before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import optuna
import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bench.toolkit.finetuning import FinetuneSettings, Method, SweepResult, checkpoint_step, train_snapshots
from bench.zoo.training import TrainSettings


@dataclass(frozen=True)
class OptunaSpace:
    """What the study may choose: lr log-uniform in `lr_range`, the rest from fixed choices."""

    trials: int
    lr_range: tuple[float, float]
    steps_choices: tuple[int, ...]
    warmup_choices: tuple[int, ...] = (0,)
    rank_choices: tuple[int, ...] | None = None  # LoRA only; None for full fine-tuning


@dataclass
class SearchResult(SweepResult):
    """The chosen trial (a sweep result plus the rank and warm-up it chose)."""

    r: int | None = None
    warmup_steps: int = 0


def _suggest(trial: optuna.Trial, space: OptunaSpace) -> dict[str, float | int]:
    """One trial's parameters; the rank only where there is one to choose."""
    params: dict[str, float | int] = {
        "lr": trial.suggest_float("lr", *space.lr_range, log=True),
        "steps": trial.suggest_categorical("steps", list(space.steps_choices)),
        "warmup_steps": trial.suggest_categorical("warmup_steps", list(space.warmup_choices)),
    }
    if space.rank_choices is not None:
        params["r"] = trial.suggest_categorical("r", list(space.rank_choices))
    return params


def _preference(value: float, params: dict[str, float | int]) -> tuple[float, ...]:
    """Higher is better: the score, then (as the grid does) fewer steps and a lower lr; then a smaller
    rank and less warm-up, so that ties always resolve the same way. A non-finite score never wins."""
    score = value if math.isfinite(value) else -math.inf
    return score, -params["steps"], -params["lr"], -params.get("r", 0), -params["warmup_steps"]


def _sampler(space: OptunaSpace, seed: int) -> optuna.samplers.TPESampler:
    """TPE seeded by the cell; half the budget (at most Optuna's usual 10) is random start-up, so that a
    small budget still has guided trials left."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, space.trials // 2)))


def search(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    answers: list[str],
    method: Method,
    space: OptunaSpace,
    seed: int,
    evaluate: Callable[[PreTrainedModel], float],
    fractions: Sequence[float] = (1.0,),
    batch_size: int = 32,
    lora_alpha: int = 16,
) -> SearchResult:
    """Run `space.trials` trials from `model`, each scored by `evaluate` on its final checkpoint, and
    return the best one with its checkpoints at `fractions` of its own step budget."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keep = sorted({*fractions, 1.0})
    best: SearchResult | None = None
    trials: list[dict[str, float | int]] = []

    def objective(trial: optuna.Trial) -> float:
        nonlocal best
        params = _suggest(trial, space)
        steps = int(params["steps"])
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # LoRA's A is drawn at random: same parameters, same weights
            training = TrainSettings(steps=steps, lr=float(params["lr"]), batch_size=batch_size,
                                     warmup_steps=int(params["warmup_steps"]), seed=seed)
            settings = FinetuneSettings(method, training, int(params.get("r", 8)), lora_alpha)
            snapshots = train_snapshots(model, tokenizer, prompts, answers, settings,
                                        [checkpoint_step(steps, f) for f in keep])
        value = float(evaluate(snapshots[checkpoint_step(steps, 1.0)]))
        trials.append({"number": trial.number, **params, "val": value})
        if best is None or _preference(value, params) > _preference(best.val_score, _params_of(best)):
            best = SearchResult(float(params["lr"]), steps, value,
                                {f: snapshots[checkpoint_step(steps, f)] for f in fractions},
                                r=int(params["r"]) if "r" in params else None,
                                warmup_steps=int(params["warmup_steps"]))
        return value  # only the winner's checkpoints stay referenced

    study = optuna.create_study(direction="maximize", sampler=_sampler(space, seed))
    study.optimize(objective, n_trials=space.trials, n_jobs=1)
    assert best is not None, "the search needs at least one trial"
    best.trials = trials
    best.trained_steps = sum(int(trial["steps"]) for trial in trials)
    return best


def _params_of(result: SearchResult) -> dict[str, float | int]:
    """The chosen trial's parameters in `_suggest`'s form, for comparing against a new trial."""
    params: dict[str, float | int] = {"lr": result.lr, "steps": result.steps, "warmup_steps": result.warmup_steps}
    if result.r is not None:
        params["r"] = result.r
    return params
