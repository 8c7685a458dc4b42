"""`merge_lock`: Merge-Lock-style random invertible transforms of attention (after arXiv 2509.01548).

Post-hoc, on the owner's plainly fine-tuned full expert: attention only ever uses the products
W_qᵀW_k (query–key) and W_o·W_v (value–output) of each head, so for random invertible M and N

    W_q → M·W_q,  W_k → M⁻ᵀ·W_k   (and the biases alike),    W_v → N·W_v,  W_o → W_o·N⁻¹

leave every logit unchanged (a test checks 1e-4) while each factor moves far from the base, so
task-vector merges add misaligned coordinates.

Assumptions: full weights of a Llama- or GPT-2-style transformer (`families`). GPT-2 (no RoPE): M is any
random invertible matrix of the head dimension. Llama: RoPE rotates query/key pairs (i, i + d/2) by
position-dependent angles, and only transforms that commute with those rotations keep q·k — per pair a
complex scalar (a scale and a rotation), so on Llama the query–key transform has d degrees of freedom per
head instead of d² (the value–output one is a full random matrix on both families). Under grouped-query
attention, the query heads reading one key/value head share its M and N. Matrices are drawn as U·diag(σ)·V
(random orthogonal U, V; σ log-uniform in [1/spread, spread]) and applied in float64. The transforms are
kept as private material, drawn from the owner's secret (`OwnerView.secret` + `key_seed`), never from the
job seed attacks see; nothing of the secret is recorded in the release (reproducible within a storage
root, see bench.harness.owner_secret). Tracks: merge. Formats: full. Architectures: llama, gpt2.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field

from bench.config import StrictModel
from bench.plugins import Defense, OwnerView, Release, register_defense
from bench.zoo.layout import FAMILIES, blocks, distance, random_invertible, rope_commuting


class MergeLockConfig(StrictModel):
    spread: float = Field(4.0, ge=1, description="singular values of each transform lie in [1/spread, spread]")
    query_key: bool = True
    value_output: bool = True
    key_seed: int = Field(0, description="added to the owner's secret to draw the transforms")


def lock(model: torch.nn.Module, config: MergeLockConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Apply the transforms in place; returns them (the key)."""
    key: dict[str, torch.Tensor] = {}
    for index, block in enumerate(blocks(model)):
        d = block.head_dim
        qk, vo = [], []
        for group in range(block.kv_heads):
            if config.query_key:
                m, m_inv_t = (rope_commuting(d, config.spread, generator) if block.rope else
                              _with_inverse_transpose(*random_invertible(d, config.spread, generator)))
                block.k.left_multiply(group * d, (group + 1) * d, m_inv_t)
                for head in _heads_of(block, group):
                    block.q.left_multiply(head * d, (head + 1) * d, m)
                qk.append(m)
            if config.value_output:
                n, n_inv = random_invertible(d, config.spread, generator)
                block.v.left_multiply(group * d, (group + 1) * d, n)
                for head in _heads_of(block, group):
                    block.o.right_multiply(head * d, (head + 1) * d, n_inv)
                vo.append(n)
        if qk:
            key[f"layer{index}.query_key"] = torch.stack(qk)
        if vo:
            key[f"layer{index}.value_output"] = torch.stack(vo)
    return key


def _with_inverse_transpose(m: torch.Tensor, m_inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return m, m_inv.T


def _heads_of(block, group: int) -> list[int]:
    return [head for head in range(block.heads) if block.group(head) == group]


@register_defense(paper="Merge-Lock-style (arXiv 2509.01548)", tracks={"merge"}, formats={"full"}, families=FAMILIES)
class MergeLock(Defense[MergeLockConfig]):
    name = "merge_lock"
    description = "Merge-Lock-style: random invertible transforms of the query-key and value-output products"

    def protect(self, owner: OwnerView) -> Release:
        config = self.config
        assert owner.reference_release is not None
        model = copy.deepcopy(owner.reference_release)
        generator = torch.Generator().manual_seed((owner.secret + config.key_seed) % 2**64)
        key = lock(model, config, generator)
        notes = {"spread": config.spread, "query_key": config.query_key, "value_output": config.value_output,
                 "distance_to_base": distance(model, owner.base),
                 "expert_distance_to_base": distance(owner.reference_release, owner.base)}
        return Release(model.eval(), private=key, notes=notes)
