"""An example lockbench defense to copy: release the update with a little Gaussian noise added.

Submit it with

    lockbench submit examples/noisy_release.py --preset smoke

It is deliberately simple and is not expected to protect much: noise small enough to keep the update's
own accuracy survives merging just as well. It shows everything a submission needs — a `Defense`
subclass with `name`, `description`, `tracks`, a `Config` (a `StrictModel`, so a typo in a config key is
an error) and `protect`, which receives the owner's view and returns a `Release`.
"""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from pydantic import Field

from bench.config import StrictModel
from bench.plugins import Defense, OwnerView, Release


class NoisyReleaseConfig(StrictModel):
    sigma: float = Field(0.05, ge=0.0, le=1.0,
                         description="noise standard deviation, relative to each tensor's update RMS")


class NoisyRelease(Defense):
    name = "noisy_release"
    description = "example: the plain update plus Gaussian noise scaled to each tensor's update RMS"
    tracks = frozenset({"merge"})  # it perturbs a fine-tuned update, so it only applies to the merge track
    formats = frozenset({"adapter", "full"})
    Config = NoisyReleaseConfig

    def protect(self, owner: OwnerView) -> Release:
        config: NoisyReleaseConfig = self.config  # type: ignore[assignment]
        model = copy.deepcopy(owner.unprotected())  # the plain expert: what the owner would publish
        generator = torch.Generator().manual_seed(owner.seed)
        if isinstance(model, PeftModel):
            # A LoRA adapter: the update is B·A, so perturb the adapter's own tensors.
            updates = {name: (param, param.detach()) for name, param in model.named_parameters() if "lora_" in name}
        else:
            base = dict(owner.base.named_parameters())
            updates = {name: (param, param.detach() - base[name].detach())
                       for name, param in model.named_parameters() if name in base}
        with torch.no_grad():
            for param, update in updates.values():
                rms = update.pow(2).mean().sqrt()
                noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
                param.add_(config.sigma * rms * noise)
        return Release(model, notes={"sigma": config.sigma, "tensors_perturbed": len(updates)})
