"""`pmp`: Private Mask Pre-Training (Wang et al., "Towards Building Non-Fine-Tunable Foundation Models",
arXiv 2602.00446).

PMP pre-trains the base so that learning lives in a sparse subnetwork whose mask stays private:
(1) early-bird mask: from the random initialisation, train densely; after every step take the global
top-ρ fraction of all parameter entries by |grad|; stop when consecutive masks have IoU ≥ 0.99 for 5
steps, or at a step cap (at our scale the masks rarely settle, so the cap usually decides — the release
notes say which did); (2) rewind to the random initialisation and pre-train updating only the masked
entries, with the zoo's base budget on the zoo's capability mixture; (3) release the dense weights and
keep the mask private (`Release.private`). Complement modes: `frozen` keeps every complement entry
exactly at its initial value (gradients masked and the complement re-imposed after every step);
`projected` also projects the complement onto an L2 ball (radius 2 by default, or `radius_fraction` of
the complement's norm at the init, which carries the code's shrinkage to our init scale) every
`project_every` steps, as the public code does. The complement gets no gradient in either mode and is re-imposed after
every step (weight decay included), so only the first projection moves it; later ones are no-ops.

ρ is the mask density: the fraction of entries that are trained (ρ = 1 is plain pre-training).
Assumptions: the initialisation is that of `none`'s base at the job seed (`build_model` with
`bench.zoo.recipes.base_seed`, so PMP and `none` differ in the masking only, and each seed re-trains
both) — which also means anyone who knows the zoo's seed can rebuild the init and read the
`frozen` complement off the release (entries equal to their init); `init: secret` draws the init from a
secret seed instead. A `pretrained:` zoo entry (a hub model) has no from-scratch recipe here, so PMP
refuses it with a clear error. Tracks: finetune. Formats: full. Architectures: any the zoo can build.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from typing import Literal

import torch
from pydantic import Field

from bench.config import StrictModel
from bench.plugins import Defense, OwnerView, Release, register_defense
from bench.zoo.architectures import build_model
from bench.zoo.recipes import base_seed
from defenses._training import batch_of, concat, evaluate, optimise, rows_loss, settings_from


class PMPConfig(StrictModel):
    rho: float = Field(0.5, gt=0, le=1, description="mask density: fraction of entries trained")
    complement: Literal["frozen", "projected"] = "frozen"
    radius: float = Field(2.0, gt=0, description="projected mode: L2 radius of the complement")
    radius_fraction: float | None = Field(
        None, gt=0, le=1, description="projected mode: the radius as this fraction of the complement's norm at "
        "the init (per tensor or global, as the scope), instead of `radius`: the code's radius 2 shrinks a "
        "full-size model's complement, while at our init scale no tensor's complement is that long")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of both training phases (the zoo "
                                "trains its bases without)")
    project_every: int = Field(50, ge=1, description="projected mode: projection period in steps")
    projection_scope: Literal["tensor", "global"] = Field(
        "tensor", description="projected mode: one ball per parameter tensor, or one over the whole complement")
    mask_max_steps: int = Field(300, ge=1, description="early-bird step cap")
    iou_threshold: float = Field(0.99, gt=0, le=1)
    iou_patience: int = Field(5, ge=1, description="consecutive steps at or above the IoU threshold")
    init: Literal["zoo", "secret"] = Field(
        "zoo", description="random init: the zoo base's (fair against `none`) or one from a secret seed")


class NotApplicableError(ValueError):
    """The defense cannot protect this model (raised before any work, with the reason)."""


def global_top_mask(gradients: list[torch.Tensor], rho: float) -> torch.Tensor:
    """A flat boolean mask of the global top-ρ fraction of entries by |grad|."""
    flat = torch.cat([g.reshape(-1).abs() for g in gradients])
    keep = max(1, round(rho * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def split_flat(flat: torch.Tensor, like: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, tensor in like:
        out[name] = flat[start:start + tensor.numel()].view_as(tensor)
        start += tensor.numel()
    return out


@register_defense(paper="PMP (Wang et al., arXiv 2602.00446)", tracks={"finetune"}, formats={"full"})
class PrivateMaskPretraining(Defense[PMPConfig]):
    name = "pmp"
    description = "Private Mask Pre-Training: pre-train only a private early-bird subnetwork, release dense weights"

    def protect(self, owner: OwnerView) -> Release:
        config = self.config
        recipe = owner.recipe
        entry = recipe.models[owner.model_name]
        if entry.architecture is None:
            raise NotApplicableError(
                f"pmp pre-trains from a random initialisation; zoo model '{owner.model_name}' is a pretrained "
                f"checkpoint ({entry.pretrained}) with no from-scratch recipe here")
        tokenizer = owner.tokenizer
        special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
                   "eos_token_id": tokenizer.eos_token_id}
        # `zoo`: the init and row order of `none`'s base at this job seed (the zoo's own at seed 0), so that
        # PMP differs from the reference in the masking only and its release varies with the seed.
        seed = base_seed(recipe, owner.seed)
        init_seed = seed if config.init == "zoo" else secrets.randbelow(2**31)
        model = build_model(entry.architecture, len(tokenizer), init_seed, special)
        named = [(n, p) for n, p in model.named_parameters()]
        if [(n, tuple(p.shape)) for n, p in named] != [(n, tuple(p.shape)) for n, p in owner.base.named_parameters()]:
            raise NotApplicableError("pmp's rebuilt initialisation does not match the zoo base's parameter shapes")
        init = {n: p.detach().clone() for n, p in named}
        data = batch_of(tokenizer, concat(list(owner.capability_data.values())))
        count = data.input_ids.shape[0]
        settings = dataclasses.replace(settings_from(recipe.base_training, seed), weight_decay=config.weight_decay)
        parameters = [p for _, p in named]

        def objective(rows: torch.Tensor, step: int) -> float:
            loss = rows_loss(model, data, rows)
            loss.backward()
            return loss.item()

        # (1) early-bird mask, dense training from the init
        state: dict = {"mask": None, "streak": 0, "ious": [], "stop": "step_cap", "steps": 0}

        def track_mask() -> None:
            mask = global_top_mask([p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters],
                                   config.rho)
            if state["mask"] is not None:
                value = iou(mask, state["mask"])
                state["ious"].append(value)
                state["streak"] = state["streak"] + 1 if value >= config.iou_threshold else 0
            state["mask"] = mask

        def stop_when_settled(step: int) -> bool:
            state["steps"] = step + 1
            if state["streak"] >= config.iou_patience:
                state["stop"] = "iou"
                return True
            return step + 1 >= config.mask_max_steps

        model.train()
        optimise(parameters, settings, count, objective, before_clip=track_mask, after_step=stop_when_settled)
        flat_mask: torch.Tensor = state["mask"]
        masks = split_flat(flat_mask, named)

        # (2) rewind and train the masked entries only
        with torch.no_grad():
            for name, p in named:
                p.copy_(init[name])

        def mask_gradients() -> None:
            for name, p in named:
                if p.grad is not None:
                    p.grad.mul_(masks[name])

        held = {name: tensor.clone() for name, tensor in init.items()}  # what the complement is held at
        radii = self._radii(named, masks, config)

        def keep_complement(step: int) -> None:
            with torch.no_grad():
                for name, p in named:  # exact, whatever the optimiser did
                    p.copy_(torch.where(masks[name], p, held[name]))
                if config.complement == "projected" and step % config.project_every == 0:
                    self._project(named, masks, radii, config.projection_scope)
                    for name, p in named:
                        held[name].copy_(p)

        model.train()
        stats = optimise(parameters, settings, count, objective, before_clip=mask_gradients,
                         after_step=keep_complement)
        model.eval()

        val_acc = {task: evaluate(model, batch_of(tokenizer, data_))[0] for task, data_ in owner.capability_val.items()}
        ious = state["ious"]
        notes = {
            "rho": config.rho, "complement": config.complement, "init": config.init,
            "weight_decay": config.weight_decay, "radius_fraction": config.radius_fraction,
            "mask_stop": state["stop"], "mask_steps": state["steps"],
            "mask_final_iou": ious[-1] if ious else None, "mask_max_iou": max(ious) if ious else None,
            "mask_density": float(flat_mask.float().mean()), "pretrain_steps": settings.steps,
            "skipped_steps": stats.skipped, "final_train_loss": stats.losses[-1],
            "capability_val_acc": sum(val_acc.values()) / max(1, len(val_acc)),
        }
        private = {f"mask.{name}": mask.clone() for name, mask in masks.items()}
        if config.init == "secret":
            private["init_seed"] = torch.tensor([init_seed], dtype=torch.int64)
        return Release(model, private=private, notes=notes)

    @staticmethod
    def _radii(named: list[tuple[str, torch.Tensor]], masks: dict[str, torch.Tensor],
               config: PMPConfig) -> dict[str, float]:
        """The projection radius of each tensor's complement (scope `tensor`) or of the whole one (`global`,
        under every name): `radius`, or `radius_fraction` of the complement's norm now (at the init)."""
        def norm(n: str, p: torch.Tensor) -> float:
            return float(p[~masks[n]].norm()) if (~masks[n]).any() else 0.0

        if config.projection_scope == "global":
            whole = math.sqrt(sum(norm(n, p) ** 2 for n, p in named))
            value = config.radius if config.radius_fraction is None else config.radius_fraction * whole
            return {n: value for n, _ in named}
        return {n: config.radius if config.radius_fraction is None else config.radius_fraction * norm(n, p)
                for n, p in named}

    @staticmethod
    def _project(named: list[tuple[str, torch.Tensor]], masks: dict[str, torch.Tensor], radii: dict[str, float],
                 scope: str) -> None:
        """Project the complement (entries outside the mask) onto the L2 ball of its radius."""
        with torch.no_grad():
            if scope == "global":
                norm = math.sqrt(sum(float((p[~masks[n]] ** 2).sum()) for n, p in named))
                factors = {n: min(1.0, radii[n] / norm) if norm > 0 else 1.0 for n, _ in named}
            else:
                factors = {}
                for n, p in named:
                    norm = float(p[~masks[n]].norm()) if (~masks[n]).any() else 0.0
                    factors[n] = min(1.0, radii[n] / norm) if norm > 0 else 1.0
            for n, p in named:
                if factors[n] < 1.0:
                    p.copy_(torch.where(masks[n], p, p * factors[n]))
