"""`params`: PaRaMS-style function-preserving re-parameterisation (after "Disrupting Model Merging: A
Parameter-Level Defense Without Sacrificing Accuracy", ICCV 2025).

Post-hoc, on the owner's plainly fine-tuned full expert: in every block, permute the MLP hidden units
(rows of gate/up or c_fc, columns of down or c_proj) and rescale each attention head with reciprocal
factors — queries by α and keys by 1/α (the logits q·k are unchanged), values by β and the output
projection's columns of that head by 1/β. The released weights compute the same function (logits equal
within float rounding; a test checks 1e-4) but sit far from the base's basin, so task-vector merging
combines misaligned coordinates.

Assumptions: full weights of a Llama- or GPT-2-style transformer (`families`); scalars per head commute
with RoPE; under grouped-query attention a key/value head and every query head reading it share one α
and one β; GPT-2's fused c_attn is edited in place per q/k/v slice; GELU is not homogeneous, so MLP
units are only permuted, never scaled. The key (permutations and factors) is kept as private material
and drawn from the owner's secret (`OwnerView.secret` + `key_seed`), never from the job seed attacks see;
nothing of the secret is recorded in the release (reproducible within a storage root, see
bench.harness.owner_secret).
An attacker who aligns the release back to the base (weight matching, head-norm matching) can undo it;
that is an attack to run against it, not something this baseline claims to resist.
Tracks: merge. Formats: full. Architectures: llama, gpt2.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field

from bench.config import StrictModel
from bench.plugins import Defense, OwnerView, Release, register_defense
from bench.zoo.layout import FAMILIES, blocks, distance, log_uniform


class ParamsConfig(StrictModel):
    spread: float = Field(10.0, ge=1, description="head factors are log-uniform in [1/spread, spread]")
    permute_mlp: bool = True
    scale_heads: bool = True
    key_seed: int = Field(0, description="added to the owner's secret to draw the key")


def reparameterise(model: torch.nn.Module, config: ParamsConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Apply the re-parameterisation in place; returns the key."""
    key: dict[str, torch.Tensor] = {}
    for index, block in enumerate(blocks(model)):
        if config.permute_mlp:
            perm = torch.randperm(block.intermediate, generator=generator)
            for out_map in block.mlp_in:
                out_map.permute(perm)
            block.mlp_out.permute(perm)
            key[f"layer{index}.mlp_perm"] = perm
        if config.scale_heads:
            alpha = log_uniform(block.kv_heads, config.spread, generator)
            beta = log_uniform(block.kv_heads, config.spread, generator)
            d = block.head_dim
            for group in range(block.kv_heads):
                block.k.left_multiply(group * d, (group + 1) * d, torch.eye(d, dtype=torch.float64) / alpha[group])
                block.v.left_multiply(group * d, (group + 1) * d, torch.eye(d, dtype=torch.float64) * beta[group])
            for head in range(block.heads):
                group = block.group(head)
                block.q.left_multiply(head * d, (head + 1) * d, torch.eye(d, dtype=torch.float64) * alpha[group])
                block.o.right_multiply(head * d, (head + 1) * d, torch.eye(d, dtype=torch.float64) / beta[group])
            key[f"layer{index}.alpha"], key[f"layer{index}.beta"] = alpha, beta
    return key


@register_defense(paper="PaRaMS-style (ICCV 2025, 'Disrupting model merging')", tracks={"merge"}, formats={"full"},
                  families=FAMILIES)
class Params(Defense[ParamsConfig]):
    name = "params"
    description = "PaRaMS-style: permute MLP units and rescale attention heads reciprocally (function unchanged)"

    def protect(self, owner: OwnerView) -> Release:
        config = self.config
        assert owner.reference_release is not None
        model = copy.deepcopy(owner.reference_release)
        generator = torch.Generator().manual_seed((owner.secret + config.key_seed) % 2**64)
        key = reparameterise(model, config, generator)
        notes = {"spread": config.spread, "permute_mlp": config.permute_mlp, "scale_heads": config.scale_heads,
                 "distance_to_base": distance(model, owner.base), "expert_distance_to_base":
                 distance(owner.reference_release, owner.base)}
        return Release(model.eval(), private=key, notes=notes)

