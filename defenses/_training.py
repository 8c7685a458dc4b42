"""Training pieces the defenses share: the zoo's recipe as settings, the owner's data, and a loop whose
objective the defense supplies.

The loop is the zoo's (`bench.zoo.training.train`: AdamW, the same warm-up/cosine schedule, the same
row sampling, gradient-norm clipping), so a defense trained with the zoo's recipe differs from the
unprotected reference only in its objective, never in the optimiser or the schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from bench.plugins import OwnerView, TaskData
from bench.toolkit.measure import evaluate, rows_forward, scaled_update, token_loss  # noqa: F401 - shared with the harness
from bench.zoo.training import TokenisedBatch, TrainSettings, lr_factor, tokenise


def settings_from(training, seed: int, grad_clip: float = 1.0) -> TrainSettings:
    """`TrainSettings` from a zoo `TrainingConfig`, exactly as the zoo builds its own."""
    return TrainSettings(steps=training.steps, lr=training.lr, batch_size=training.batch_size,
                         warmup_steps=training.warmup_steps, grad_clip=grad_clip, seed=seed)


def owner_task_data(owner: OwnerView, replay_fraction: float) -> TaskData:
    """The owner's task examples plus the replayed public-mixture share, as the zoo's expert saw them."""
    assert owner.owner_train is not None
    prompts, answers = list(owner.owner_train.prompts), list(owner.owner_train.answers)
    if replay_fraction > 0 and owner.replay is not None:
        count = min(len(owner.replay.prompts), int(replay_fraction * len(prompts)))
        prompts += owner.replay.prompts[:count]
        answers += owner.replay.answers[:count]
    return TaskData(prompts, answers)


def concat(parts: Sequence[TaskData]) -> TaskData:
    return TaskData([p for part in parts for p in part.prompts], [a for part in parts for a in part.answers])


def batch_of(tokenizer: PreTrainedTokenizerBase, data: TaskData) -> TokenisedBatch:
    return tokenise(tokenizer, data.prompts, data.answers)


def rows_loss(model: nn.Module, batch: TokenisedBatch, rows: torch.Tensor,
              parameters: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    return token_loss(*rows_forward(model, batch, rows, parameters))


@contextmanager
def same_randomness() -> Iterator[Callable[[], None]]:
    """Yields `replay()`, which rewinds the CPU and CUDA generators to where they were on entry: a second
    forward pass after `replay()` draws the same dropout masks as the first."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def replay() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    yield replay


@dataclass
class LoopStats:
    losses: list[float]
    skipped: int


def optimise(
    parameters: list[nn.Parameter],
    settings: TrainSettings,
    count: int,
    objective: Callable[[torch.Tensor, int], float],
    before_clip: Callable[[], None] | None = None,
    after_step: Callable[[int], bool | None] | None = None,
) -> LoopStats:
    """The zoo's loop with a pluggable objective.

    `objective(rows, step)` computes its loss(es) on the sampled rows, calls `backward()` itself (so a
    two-pass objective frees its first graph early) and returns the value to log. A step whose loss or
    gradient norm is not finite is skipped (no update; the schedule still advances). `after_step` may
    return True to stop early (the schedule is still the one of `settings.steps`).
    """
    optimiser = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: lr_factor(step, settings))
    generator = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    skipped = 0
    for step in range(settings.steps):
        rows = torch.randint(0, count, (min(settings.batch_size, count),), generator=generator)
        optimiser.zero_grad(set_to_none=True)
        value = objective(rows, step)
        if before_clip is not None:
            before_clip()
        norm = torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        if math.isfinite(value) and bool(torch.isfinite(norm)):
            optimiser.step()
        else:
            skipped += 1
        schedule.step()
        losses.append(value)
        if after_step is not None and after_step(step):
            break
    return LoopStats(losses, skipped)


class BestCheckpoint:
    """Keeps the trainable tensors of the best evaluation so far: highest accuracy, then lowest loss."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.best: tuple[float, float] | None = None
        self.step = -1
        self.state: dict[str, torch.Tensor] = {}
        self.history: list[tuple[int, float, float]] = []

    def offer(self, step: int, accuracy: float, loss: float) -> None:
        self.history.append((step, accuracy, loss))
        if self.best is None or (accuracy, -loss) > (self.best[0], -self.best[1]):
            self.best, self.step = (accuracy, loss), step
            self.state = {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def restore(self) -> None:
        with torch.no_grad():
            named = dict(self.model.named_parameters())
            for name, tensor in self.state.items():
                named[name].copy_(tensor)


def eval_steps(steps: int, every: int) -> set[int]:
    """0-based steps after which to evaluate: every `every` steps and always the last."""
    every = every if every > 0 else max(1, steps // 10)
    return {step for step in range(steps) if (step + 1) % every == 0} | {steps - 1}
