"""A small supervised training loop for prompt → answer data.

The tiny zoo trains thousands of steps on two CPU cores, where transformers' Trainer costs more in
bookkeeping than the model costs in compute; this loop keeps the data pre-tokenised in one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from bench.runtime.device import inputs_on

ANSWER_END = "\n"


@dataclass
class TokenisedBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def tokenise(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    loss_on_prompt: bool = False,
) -> TokenisedBatch:
    """Right-padded `prompt + answer + newline`; labels mask the prompt unless `loss_on_prompt`."""
    rows, label_rows = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + ANSWER_END, add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + answer_ids)
        masked = prompt_ids if loss_on_prompt else [-100] * len(prompt_ids)
        label_rows.append(masked + answer_ids)
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for index, (row, label_row) in enumerate(zip(rows, label_rows, strict=True)):
        input_ids[index, : len(row)] = torch.tensor(row)
        labels[index, : len(row)] = torch.tensor(label_row)
        attention[index, : len(row)] = 1
    return TokenisedBatch(input_ids, attention, labels)


def batch_loss(model: nn.Module, batch: TokenisedBatch, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over the labelled tokens of the selected rows."""
    width = int(batch.attention_mask[rows].sum(dim=1).max())
    input_ids, attention_mask, labels = inputs_on(model, batch.input_ids[rows, :width],
                                                  batch.attention_mask[rows, :width], batch.labels[rows, :width])
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


@dataclass
class TrainSettings:
    steps: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    seed: int = 0


def train(
    model: nn.Module,
    data: TokenisedBatch,
    settings: TrainSettings,
    on_step: Callable[[int, float], None] | None = None,
    on_gradients: Callable[[], None] | None = None,
) -> list[float]:
    """AdamW with linear warm-up then cosine decay; returns the loss of every step. `on_gradients` runs
    after each backward pass, before clipping (e.g. to zero the gradients of entries left untrained)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: lr_factor(step, settings))
    generator = torch.Generator().manual_seed(settings.seed)
    count = data.input_ids.shape[0]
    losses: list[float] = []
    model.train()
    for step in range(settings.steps):
        rows = torch.randint(0, count, (min(settings.batch_size, count),), generator=generator)
        loss = batch_loss(model, data, rows)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if on_gradients is not None:
            on_gradients()
        torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


def lr_factor(step: int, settings: TrainSettings) -> float:

    if settings.warmup_steps and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
