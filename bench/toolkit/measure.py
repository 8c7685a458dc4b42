"""Measuring a model on the owner's own tokenised data: answer-only loss, greedy accuracy, and a release's
update re-scaled as a merge re-scales it.

Defenses use these for checkpoint choice (Trap² picks its checkpoint on the nominal accuracy of the
owner's held-out tail) and the harness for the release diagnostics of DESIGN §5 (accuracy and loss of
the release at scales 1/8 … 2, and whether a trap formed). They are the owner's side measurements, on
the owner's split; every published accuracy of an attack comes from lm-eval (bench.toolkit.evaluate).
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bench.results.columns import DIAGNOSTIC_SCALES
from bench.runtime.device import inputs_on
from bench.toolkit.evaluate import as_plain_model
from bench.zoo.training import TokenisedBatch, tokenise


def rows_forward(model: nn.Module, batch: TokenisedBatch, rows: torch.Tensor,
                 parameters: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and shifted labels of the selected rows, optionally at substituted `parameters`
    (torch.func.functional_call: the model is evaluated at another point without being copied)."""
    width = int(batch.attention_mask[rows].sum(dim=1).max())
    input_ids, attention_mask, labels = inputs_on(model, batch.input_ids[rows, :width],
                                                  batch.attention_mask[rows, :width], batch.labels[rows, 1:width])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if parameters is None:
        logits = model(**inputs).logits
    else:
        logits = torch.func.functional_call(model, parameters, args=(), kwargs=inputs, strict=False).logits
    return logits[:, :-1], labels


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens (what `batch_loss` computes through transformers)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                       ignore_index=-100)


@torch.no_grad()
def evaluate(model: nn.Module, batch: TokenisedBatch, parameters: dict[str, torch.Tensor] | None = None,
             chunk: int = 256) -> tuple[float, float]:
    """(greedy accuracy, mean loss): a row counts as correct when greedy decoding emits its whole answer
    and the closing newline, the same signal as lm-eval's `acc` (is_greedy) that the harness reports."""
    was_training = model.training
    model.eval()
    correct, loss_sum, tokens = 0, 0.0, 0
    count = batch.input_ids.shape[0]
    for start in range(0, count, chunk):
        rows = torch.arange(start, min(count, start + chunk))
        logits, labels = rows_forward(model, batch, rows, parameters)
        mask = labels != -100
        hits = (logits.argmax(-1) == labels) | ~mask
        correct += int(hits.all(dim=1).sum())
        loss_sum += float(nn.functional.cross_entropy(logits[mask].float(), labels[mask], reduction="sum"))
        tokens += int(mask.sum())
    model.train(was_training)
    return correct / count, loss_sum / max(1, tokens)


def scaled_update(base: PreTrainedModel, release: PreTrainedModel | PeftModel, scale: float) -> PreTrainedModel:
    """W0 + s·(W − W0): the release's update re-scaled as a merge re-scales it (adapters folded first)."""
    plain = as_plain_model(release)
    base_state = base.state_dict()
    model = copy.deepcopy(plain)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and name in base_state:
                tensor.copy_(base_state[name] + scale * (tensor - base_state[name]))
    return model.eval()


def release_diagnostics(base: PreTrainedModel, release: PreTrainedModel | PeftModel,
                        tokenizer: PreTrainedTokenizerBase, prompts: list[str], answers: list[str]
                        ) -> dict[str, float]:
    """Greedy accuracy and answer-only loss of W0 + s·ΔW at every DIAGNOSTIC_SCALES s (LoRA folded first,
    so s scales B·A, i.e. B) on the owner's held-out examples: where a scale trap shows, if one formed."""
    batch = tokenise(tokenizer, prompts, answers)
    found: dict[str, float] = {}
    for tag, scale in DIAGNOSTIC_SCALES.items():
        accuracy, loss = evaluate(scaled_update(base, release, scale), batch)
        found[f"release_acc_{tag}"], found[f"release_loss_{tag}"] = accuracy, loss
    return found
