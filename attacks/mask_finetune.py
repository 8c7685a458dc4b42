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
- a matrix starts as zero-mean Gaussian noise: a two-component zero-mean Gaussian scale mixture is fitted
  by EM to its entries; the narrow component is the untouched initialisation, the wide one the trained
  entries (initial value plus an update); an entry whose posterior for the wide one exceeds ½ is trained.

It reads nothing private: not the mask, not the seed of the initialisation (`init: zoo` would let an
attacker rebuild the init and read the frozen complement exactly; this estimator also works under
`init: secret`). How well the estimate matches the private mask is measured in tests/test_mask_finetune.py
with the mask the defense kept. Track: finetune. Formats: full.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator

from attacks.common import SweepConfig, run_sweep
from bench.evaluate import as_plain_model
from bench.plugins import Attack, AttackOutput, PublicView, register_attack


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
    if int(counts[top]) < max(2, math.ceil(tie_fraction * values.numel())):
        return torch.ones_like(values, dtype=torch.bool)
    return values != unique[top]


def scale_mixture_mask(values: torch.Tensor, iterations: int) -> torch.Tensor:
    """A matrix's trained entries: the wide component of a two-scale zero-mean Gaussian mixture (EM)."""
    w2 = values.detach().double().reshape(-1) ** 2
    narrow, wide, share = 0.5 * float(w2.median()) / 0.4549, 2.0 * float(w2.mean()), 0.5  # 0.4549: median of χ²₁
    narrow, wide = max(narrow, 1e-12), max(wide, 2e-12)
    for _ in range(iterations):
        log_wide = math.log(share) - 0.5 * math.log(wide) - w2 / (2 * wide)
        log_narrow = math.log(1 - share) - 0.5 * math.log(narrow) - w2 / (2 * narrow)
        posterior = torch.sigmoid(log_wide - log_narrow)
        weight = float(posterior.sum())
        if weight < 1 or weight > w2.numel() - 1:  # one component took everything: no second scale
            break
        share = weight / w2.numel()
        wide = max(float((posterior * w2).sum()) / weight, 1e-12)
        narrow = max(float(((1 - posterior) * w2).sum()) / (w2.numel() - weight), 1e-12)
        if narrow > wide:
            narrow, wide, share = wide, narrow, 1 - share
    log_wide = math.log(share) - 0.5 * math.log(wide) - w2 / (2 * wide)
    log_narrow = math.log(1 - share) - 0.5 * math.log(narrow) - w2 / (2 * narrow)
    return (log_wide > log_narrow).reshape(values.shape)


def estimate_mask(model: Any, tie_fraction: float = 0.01, iterations: int = 100) -> dict[str, torch.Tensor]:
    """Per parameter name, the entries estimated trained (see the module docstring)."""
    masks = {}
    for name, parameter in as_plain_model(model).named_parameters():
        values = parameter.detach()
        masks[name] = (constant_init_mask(values, tie_fraction) if values.dim() < 2
                       else scale_mixture_mask(values, iterations))
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
