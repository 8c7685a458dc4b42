"""Fine-tune only an estimated private mask (issue 29): the attack a reviewer runs against PMP-style bases.

Threat: PMP keeps its trained subnetwork (the mask) private and claims that an attacker who fine-tunes
the dense release cannot adapt it well. But the release gives the mask away statistically: the frozen
complement keeps its random-initialisation statistics while the masked entries moved. This attacker
estimates the mask from the released weights alone, then fine-tunes only the estimate (full fine-tuning
with the other entries' gradients zeroed), with the same lr × steps sweep chosen on attacker_val as
`full_finetune`.

The estimator is our own (no maintained library estimates a training mask from weights), per tensor:
- a vector (norm weights, biases) starts at one constant (1 or 0): entries still exactly at the
  tensor's most common value are estimated untrained when that value is shared by at least
  `tie_fraction` of the entries; with no such value every entry moved;
- a matrix starts as zero-mean Gaussian noise of a scale the architecture fixes (read off a fresh random
  initialisation of the release's config: public, unlike the owner's init values): a two-component
  zero-mean Gaussian mixture is fitted by EM to its entries, the narrow component held at that init scale
  (the untouched complement), the wide one free (initial value plus an update); an entry whose posterior
  for the wide one exceeds ½ is trained.

Where a tensor shows nothing to tell apart (every entry at its constant, or the whole matrix at the
init's scale: a fresh random model, e.g. the from-scratch control), every entry of it is trained: the
attacker freezes only what it has evidence was left untouched, so its control is plain fine-tuning from
scratch, not a frozen model. It reads nothing private: not the mask, not the seed of the initialisation
(`init: zoo` would let an attacker rebuild the init and read the frozen complement exactly; this
estimator also works under `init: secret`). How well the estimate matches the private mask is measured
in tests/system/test_mask_finetune.py with the mask the defense kept. Track: finetune. Formats: full.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator
from transformers import PreTrainedModel

from attacks.common import SweepConfig, run_sweep
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.toolkit.evaluate import as_plain_model


class MaskFinetuneConfig(SweepConfig):
    lr: list[float] = Field(default_factory=lambda: [1e-3, 3e-3], min_length=1)
    steps: list[int] = Field(default_factory=lambda: [150, 300], min_length=1)
    tie_fraction: float = Field(0.01, gt=0, le=1, description="vectors: the share of entries at one exact value "
                                "for that value to be read as the untouched constant initialisation")
    em_iterations: int = Field(100, ge=1, description="matrices: EM iterations of the two-scale mixture")

    @model_validator(mode="after")
    def _grid_only(self) -> MaskFinetuneConfig:
        if self.search != "grid":
            raise ValueError("search: the masked fine-tuning runs the lr × steps grid only")
        return self


def constant_init_mask(values: torch.Tensor, tie_fraction: float) -> torch.Tensor:
    """A vector's trained entries: those away from its most common exact value, if that value is common."""
    unique, counts = torch.unique(values, return_counts=True)
    top = int(counts.argmax())
    if int(counts[top]) < max(2, math.ceil(tie_fraction * values.numel())) or len(unique) == 1:
        return torch.ones_like(values, dtype=torch.bool)  # every entry moved, or none did: nothing to tell apart
    return values != unique[top]


def scale_mixture_mask(values: torch.Tensor, init_std: float, iterations: int) -> torch.Tensor:
    """A matrix's trained entries: those the wide component of a two-scale zero-mean Gaussian mixture
    explains better than the initialisation's own N(0, init_std²), fitted by EM (share and wide scale)."""
    w2 = values.detach().double().reshape(-1) ** 2
    narrow = max(init_std**2, 1e-12)
    if float(w2.mean()) <= narrow * (1 + 4 * math.sqrt(2 / w2.numel())):
        # no more spread than the init itself (4 standard errors of a variance): nothing to tell apart
        return torch.ones_like(values, dtype=torch.bool)
    wide, share = max(float(w2.mean()), 2 * narrow), 0.5
    for _ in range(iterations):
        posterior = torch.sigmoid(_log_odds(w2, share, narrow, wide))
        weight = float(posterior.sum())
        if weight < 1 or weight > w2.numel() - 1:  # one component took everything: nothing to tell apart
            return torch.ones_like(values, dtype=torch.bool)
        share = weight / w2.numel()
        wide = max(float((posterior * w2).sum()) / weight, narrow * (1 + 1e-6))
    return (_log_odds(w2, share, narrow, wide) > 0).reshape(values.shape)


def _log_odds(w2: torch.Tensor, share: float, narrow: float, wide: float) -> torch.Tensor:
    """log P(wide, w) − log P(narrow, w) for zero-mean Gaussians of variances `wide` and `narrow`."""
    return (math.log(share) - math.log(1 - share) + 0.5 * math.log(narrow / wide)
            - w2 / (2 * wide) + w2 / (2 * narrow))


def init_scales(model: PreTrainedModel) -> dict[str, float]:
    """Each tensor's standard deviation in a fresh random initialisation of the release's architecture:
    public (the architecture's config and its init rule), unlike the owner's init values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = type(model)(model.config)
    return {name: float(parameter.detach().double().std()) if parameter.numel() > 1 else 0.0
            for name, parameter in fresh.named_parameters()}


def estimate_mask(model: Any, tie_fraction: float = 0.01, iterations: int = 100) -> dict[str, torch.Tensor]:
    """Per parameter name, the entries estimated trained (see the module docstring)."""
    plain = as_plain_model(model)
    scales = init_scales(plain)
    masks = {}
    for name, parameter in plain.named_parameters():
        values = parameter.detach()
        random_init = values.dim() >= 2 and scales.get(name, 0.0) > 0
        masks[name] = (scale_mixture_mask(values, scales[name], iterations) if random_init
                       else constant_init_mask(values, tie_fraction))
    return masks


@register_attack(track="finetune", family="finetune", formats={"full"})
class MaskFinetune(Attack[MaskFinetuneConfig]):
    name = "mask_finetune"
    description = "estimate a private training mask from the released weights, fine-tune only the estimate"

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        mask = estimate_mask(view.release, config.tie_fraction, config.em_iterations)
        output = run_sweep(view, config, "full", update_mask=mask)
        total = sum(m.numel() for m in mask.values())
        output.knobs["estimated_density"] = sum(int(m.sum()) for m in mask.values()) / max(1, total)
        return output
