"""RegMean merging (DESIGN §4, "data-dependent merging"): Jin, Ren, Preotiuc-Pietro, Cheng, "Dataless
Knowledge Fusion by Merging Weights of Language Models", ICLR 2023, arXiv 2212.09849.

For every linear map, the merged weight is the one whose outputs are closest, in least squares, to each
member's own outputs on that member's inputs: with Xᵢ the inputs the layer sees when member i runs on its
own task's data and Gᵢ = XᵢᵀXᵢ, W = (Σᵢ Gᵢ)⁻¹ Σᵢ Gᵢ Wᵢ. Off-diagonal entries of each Gᵢ are shrunk
(Gᵢ ← α·Gᵢ + (1−α)·diag(Gᵢ)), as the paper does, so that the solution interpolates between RegMean
(α = 1) and plain averaging (α = 0). Everything that is not a linear map's weight (embeddings, norms,
biases) is averaged.

This is the one merge lockbench implements itself: mergekit's methods are all data-free (they see only
weights), and no maintained library ships a data-dependent merger. The attacker's data is only what the
public view holds: `attacker_train` prompts for the release and each public expert's `public_experts_val`
prompts (the only data it has for the other tasks). It uses attacker data for the protected task, so it
belongs to the `data` family; the release enters at its own scale, as RegMean weighs members by their
inputs, not by coefficients.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from attacks.common import RELEASE, MergeInputs, expert_name, model_from_state
from bench.config import StrictModel
from bench.plugins import Attack, AttackOutput, PublicView, TaskData, register_attack
from bench.runtime.device import inputs_on


class RegMeanConfig(StrictModel):
    alpha: float = Field(0.9, ge=0, le=1, description="off-diagonal scale of each Gram matrix (the paper's α; "
                         "1 is pure RegMean, 0 plain averaging)")
    ridge: float = Field(1e-6, ge=0, description="added to each Gram's diagonal, relative to its mean diagonal, "
                         "so that directions no input reaches fall back to the average")
    max_examples: int = Field(256, ge=1, description="examples per member used for its Gram matrices")
    with_answers: bool = Field(False, description="feed prompt + answer instead of the prompt alone")
    normalize_grams: bool = Field(True, description="divide each Gram by its token count, so members weigh "
                                  "alike whatever the size of the attacker's data for their task")
    batch_size: int = Field(32, ge=1)


def regmean_merge(
    states: Sequence[Mapping[str, torch.Tensor]],
    grams: Sequence[Mapping[str, torch.Tensor]],
    alpha: float = 0.9,
    *,
    transposed: Collection[str] = (),
    ridge: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Merge `states` (one state dict per member) with RegMean.

    `grams[i][name]` is member i's (in × in) input Gram matrix of the linear weight `name`; every tensor
    without a Gram is averaged (non-floating ones are taken from the first member). Weights are nn.Linear
    layout (out, in) unless their name is in `transposed` (GPT-2's Conv1D, stored (in, out)). The ridge is
    added per member (relative to that member's mean diagonal), which keeps three identities exact: one
    member returns it, identical Grams give the average, identity Grams give the average.
    """
    if not states or len(states) != len(grams):
        raise ValueError(f"need one Gram set per member, got {len(states)} states and {len(grams)} Gram sets")
    linear = set(grams[0])
    if any(set(member) != linear for member in grams):
        raise ValueError("every member needs Gram matrices for the same layers")
    merged: dict[str, torch.Tensor] = {}
    for name, first in states[0].items():
        tensors = [state[name] for state in states]
        if name in linear:
            merged[name] = _solve(tensors, [member[name] for member in grams], alpha, ridge, name in transposed)
        elif first.is_floating_point():
            merged[name] = torch.stack([t.double() for t in tensors]).mean(0).to(first.dtype)
        else:
            merged[name] = first.clone()
    return merged


def _regularised(gram: torch.Tensor, alpha: float, ridge: float) -> torch.Tensor:
    """α·G + (1−α)·diag(G) + ridge·mean(diag G)·I (float64): the paper's shrinkage plus invertibility."""
    gram = gram.double()
    diagonal = torch.diagonal(gram)
    shrunk = alpha * gram + (1 - alpha) * torch.diag(diagonal)
    scale = float(diagonal.mean()) if float(diagonal.mean()) > 0 else 1.0
    return shrunk + ridge * scale * torch.eye(gram.shape[0], dtype=torch.float64)


def _solve(weights: list[torch.Tensor], grams: list[torch.Tensor], alpha: float, ridge: float,
           transposed: bool) -> torch.Tensor:
    """W = (Σ Gᵢ)⁻¹ Σ Gᵢ Wᵢ with each Wᵢ as (in, out), returned in the weight's own layout and dtype."""
    regularised = [_regularised(gram, alpha, ridge) for gram in grams]
    as_in_out = [(w.double() if transposed else w.double().T) for w in weights]
    for gram, w in zip(regularised, as_in_out, strict=True):
        if gram.shape[0] != w.shape[0]:
            raise ValueError(f"Gram of size {gram.shape[0]} does not match a weight with {w.shape[0]} inputs")
    total = torch.stack(regularised).sum(0)
    target = sum(gram @ w for gram, w in zip(regularised, as_in_out, strict=True))
    solution = torch.linalg.solve(total, target)
    return (solution if transposed else solution.T).contiguous().to(weights[0].dtype)


def linear_layers(model: PreTrainedModel) -> dict[str, bool]:
    """Weight name → stored transposed (Conv1D) for every linear map RegMean solves for.

    A linear map whose weight is an embedding's (tied output head) is left out: it is averaged with
    the embedding, since one tensor cannot take two different merges.
    """
    embedded = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    layers: dict[str, bool] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear | Conv1D) and id(module.weight) not in embedded:
            layers[f"{name}.weight" if name else "weight"] = isinstance(module, Conv1D)
    return layers


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, tokenised as the zoo trains (no special tokens)."""
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"][:max_length] for text in texts]
    rows = [row for row in rows if row]
    if not rows:
        raise ValueError("no non-empty example to collect Gram matrices from")
    width = max(len(row) for row in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    return ids, mask


@contextmanager
def _gram_hooks(model: PreTrainedModel, layers: Collection[str], grams: dict[str, torch.Tensor],
                current_mask: list[torch.Tensor]) -> Iterator[None]:
    """Forward pre-hooks that add XᵀX of each layer's real (unpadded) input tokens into `grams`."""
    modules = dict(model.named_modules())
    handles = []

    def hook_for(name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach().double()
            x = x.reshape(-1, x.shape[-1])[current_mask[0].reshape(-1).bool()]
            gram = x.T @ x
            grams[name] = grams[name] + gram if name in grams else gram
        return hook

    try:
        for weight_name in layers:
            module_name = weight_name.removesuffix(".weight")
            handles.append(modules[module_name].register_forward_pre_hook(hook_for(weight_name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def collect_grams(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                  layers: Collection[str], batch_size: int = 32, normalize: bool = True
                  ) -> tuple[dict[str, torch.Tensor], int]:
    """Each layer's input Gram matrix while `model` runs on `texts`; also the number of tokens seen."""
    config = model.config
    max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    ids, mask = encode(tokenizer, texts, max_length)
    grams: dict[str, torch.Tensor] = {}
    current: list[torch.Tensor] = [mask]
    model.eval()
    with torch.no_grad(), _gram_hooks(model, layers, grams, current):
        for start in range(0, len(ids), batch_size):
            rows = slice(start, start + batch_size)
            width = int(mask[rows].sum(1).max())
            input_ids, attention_mask = inputs_on(model, ids[rows, :width], mask[rows, :width])
            current[0] = attention_mask  # the hooks weigh each token's input by it, on the model's device
            model(input_ids=input_ids, attention_mask=attention_mask)
    tokens = int(mask.sum())
    if normalize:
        grams = {name: gram / tokens for name, gram in grams.items()}
    return grams, tokens


def member_data(view: PublicView) -> dict[str, TaskData]:
    """Each member's own-task data as the attacker has it: its train split for the release, the
    public validation split for each public expert."""
    data = {RELEASE: view.attacker_train}
    data.update({expert_name(task): view.public_experts_val[task] for task in view.public_experts})
    return data


def _texts(data: TaskData, config: RegMeanConfig) -> list[str]:
    pairs = list(zip(data.prompts, data.answers, strict=True))[: config.max_examples]
    return [prompt + answer if config.with_answers else prompt for prompt, answer in pairs]


@register_attack(track="merge", family="data")
class RegMean(Attack[RegMeanConfig]):
    name = "regmean"
    description = ("RegMean (Jin et al., ICLR 2023): per linear layer, the least-squares merge of the members "
                   "weighted by their input Gram matrices on the attacker's data")

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        inputs = MergeInputs.from_view(view)
        layers = linear_layers(inputs.template)
        data = member_data(view)
        grams, examples, tokens = [], {}, {}
        for name, state in inputs.members.items():
            texts = _texts(data[name], config)
            model = model_from_state(inputs.template, state)
            member_grams, tokens[name] = collect_grams(model, view.tokenizer, texts, layers, config.batch_size,
                                                       config.normalize_grams)
            grams.append(member_grams)
            examples[name] = len(texts)
            del model
        merged = regmean_merge(list(inputs.members.values()), grams, config.alpha,
                               transposed={name for name, t in layers.items() if t}, ridge=config.ridge)
        # DESIGN §4's per-row merge knobs: RegMean has no coefficients, density or rescaling (members enter
        # at their own scale, weighted by their Gram matrices), so those are recorded as empty.
        knobs = {"method": "regmean", "weights": None, "normalize": None, "lambda": None, "density": None,
                 "rescale": None, "alpha": config.alpha, "ridge": config.ridge, "seed": view.seed,
                 "examples_per_member": examples, "tokens_per_member": tokens, "with_answers": config.with_answers,
                 "normalize_grams": config.normalize_grams, "regmean_layers": len(layers)}
        return AttackOutput(models={1.0: model_from_state(inputs.template, merged)}, knobs=knobs,
                            examples=sum(examples.values()))
