"""Where a transformer keeps its attention heads and MLP units, for the function-preserving baselines.

Two layouts are known: Llama-style (`nn.Linear`, weight (out, in), separate q/k/v/o, RoPE, grouped
query attention) and GPT-2-style (`Conv1D`, weight (in, out), q|k|v fused in `c_attn`, no RoPE). Every
edit goes through `OutMap` (a map whose output rows are transformed: q, k, v, gate, up, c_fc) or `InMap`
(a map whose input columns are transformed: o, down, c_proj), computed in float64 and written back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from bench.zoo.architectures import TRANSFORMER_FAMILIES

#: The families whose block layout is known here: the transformers of the zoo (Mamba has no heads or MLP).
FAMILIES = TRANSFORMER_FAMILIES


@dataclass
class OutMap:
    """Output rows [offset, offset + size) of a linear map, seen as a (rows, in) matrix."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    transposed: bool  # Conv1D: weight is (in, out)
    offset: int = 0

    def get(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, b = self.offset + start, self.offset + stop
        block = self.weight[:, a:b].T if self.transposed else self.weight[a:b]
        bias = self.bias[a:b] if self.bias is not None else None
        return block.double(), (bias.double() if bias is not None else None)

    def set(self, start: int, stop: int, block: torch.Tensor, bias: torch.Tensor | None) -> None:
        a, b = self.offset + start, self.offset + stop
        with torch.no_grad():
            if self.transposed:
                self.weight[:, a:b] = block.T.to(self.weight.dtype)
            else:
                self.weight[a:b] = block.to(self.weight.dtype)
            if self.bias is not None and bias is not None:
                self.bias[a:b] = bias.to(self.bias.dtype)

    def left_multiply(self, start: int, stop: int, matrix: torch.Tensor) -> None:
        """rows ← M · rows (and bias ← M · bias): the map's output block is transformed by M."""
        block, bias = self.get(start, stop)
        self.set(start, stop, matrix @ block, matrix @ bias if bias is not None else None)

    def permute(self, perm: torch.Tensor) -> None:
        """Reorder the output rows (of an unfused map): new row j is old row perm[j]."""
        assert self.offset == 0, "permute is for unfused maps"
        size = self.weight.shape[1] if self.transposed else self.weight.shape[0]
        block, bias = self.get(0, size)
        self.set(0, size, block[perm], bias[perm] if bias is not None else None)


@dataclass
class InMap:
    """Input columns of a linear map, seen as an (out, cols) matrix."""

    weight: torch.Tensor
    transposed: bool

    def get(self, start: int, stop: int) -> torch.Tensor:
        return (self.weight[start:stop].T if self.transposed else self.weight[:, start:stop]).double()

    def set(self, start: int, stop: int, block: torch.Tensor) -> None:
        with torch.no_grad():
            if self.transposed:
                self.weight[start:stop] = block.T.to(self.weight.dtype)
            else:
                self.weight[:, start:stop] = block.to(self.weight.dtype)

    def right_multiply(self, start: int, stop: int, matrix: torch.Tensor) -> None:
        """cols ← cols · M: undoes `left_multiply(M⁻¹)` on the map that feeds these columns."""
        self.set(start, stop, self.get(start, stop) @ matrix)

    def permute(self, perm: torch.Tensor) -> None:
        size = self.weight.shape[0] if self.transposed else self.weight.shape[1]
        self.set(0, size, self.get(0, size)[:, perm])


@dataclass
class Block:
    """One transformer block's maps and head geometry."""

    q: OutMap
    k: OutMap
    v: OutMap
    o: InMap
    mlp_in: list[OutMap]  # maps producing the hidden units (gate and up, or c_fc)
    mlp_out: InMap  # the map consuming them (down, or c_proj)
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    rope: bool

    def group(self, head: int) -> int:
        """The key/value head a query head reads (grouped query attention)."""
        return head // (self.heads // self.kv_heads)


def blocks(model: PreTrainedModel) -> list[Block]:
    """The blocks of a Llama- or GPT-2-style model (ValueError for any other layout)."""
    family = model.config.model_type
    if family == "llama":
        return [_llama_block(model, layer) for layer in model.model.layers]
    if family == "gpt2":
        return [_gpt2_block(model, layer) for layer in model.transformer.h]
    raise ValueError(f"no attention/MLP layout known for model_type {family!r} (known: {sorted(FAMILIES)})")


def _llama_block(model: PreTrainedModel, layer) -> Block:
    config, attn, mlp = model.config, layer.self_attn, layer.mlp
    rope = getattr(config, "rope_parameters", None) or {}
    if float(rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        raise ValueError("partial rotary embeddings are not supported")

    def out(linear) -> OutMap:
        return OutMap(linear.weight, linear.bias, False)

    return Block(q=out(attn.q_proj), k=out(attn.k_proj), v=out(attn.v_proj), o=InMap(attn.o_proj.weight, False),
                 mlp_in=[out(mlp.gate_proj), out(mlp.up_proj)], mlp_out=InMap(mlp.down_proj.weight, False),
                 heads=config.num_attention_heads, kv_heads=config.num_key_value_heads, head_dim=attn.head_dim,
                 intermediate=mlp.gate_proj.weight.shape[0], rope=True)


def _gpt2_block(model: PreTrainedModel, layer) -> Block:
    config, attn, mlp = model.config, layer.attn, layer.mlp
    if getattr(attn, "is_cross_attention", False):
        raise ValueError("cross-attention GPT-2 blocks are not supported")
    width = config.n_embd
    fused = attn.c_attn
    return Block(q=OutMap(fused.weight, fused.bias, True, 0), k=OutMap(fused.weight, fused.bias, True, width),
                 v=OutMap(fused.weight, fused.bias, True, 2 * width), o=InMap(attn.c_proj.weight, True),
                 mlp_in=[OutMap(mlp.c_fc.weight, mlp.c_fc.bias, True)], mlp_out=InMap(mlp.c_proj.weight, True),
                 heads=config.n_head, kv_heads=config.n_head, head_dim=width // config.n_head,
                 intermediate=mlp.c_fc.weight.shape[1], rope=False)


def random_invertible(size: int, spread: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, M⁻¹) in float64: M = U·diag(σ)·V with random orthogonal U, V and σ log-uniform in [1/spread,
    spread], so its condition number is at most spread² and the inverse is exact up to rounding."""
    u, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    sigma = log_uniform(size, spread, generator)
    return u @ torch.diag(sigma) @ v, v.T @ torch.diag(1 / sigma) @ u.T


def log_uniform(count: int, spread: float, generator: torch.Generator) -> torch.Tensor:
    """`count` factors log-uniform in [1/spread, spread] (float64)."""
    return torch.exp((2 * torch.rand(count, generator=generator, dtype=torch.float64) - 1) * torch.log(
        torch.tensor(float(spread), dtype=torch.float64)))


def rope_commuting(head_dim: int, spread: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, M⁻ᵀ) that commute with every RoPE rotation, for Llama's rotate-half layout.

    RoPE rotates each pair (i, i + d/2) by an angle that depends on the position, so a query/key transform
    keeps q·k only if it is, pair by pair, a complex scalar z (scale and rotation): q-pair → z·q-pair,
    k-pair → (z/|z|²)·k-pair, whose product is unchanged and which commutes with the position rotations.
    """
    half = head_dim // 2
    radius = log_uniform(half, spread, generator)
    angle = (2 * torch.rand(half, generator=generator, dtype=torch.float64) - 1) * torch.pi
    a, b = radius * torch.cos(angle), radius * torch.sin(angle)
    m = torch.zeros(head_dim, head_dim, dtype=torch.float64)
    index = torch.arange(half)
    m[index, index], m[index, index + half] = a, -b
    m[index + half, index], m[index + half, index + half] = b, a
    return m, m / (radius**2).repeat(2).unsqueeze(1)


def distance(model: torch.nn.Module, base: torch.nn.Module) -> float:
    """‖θ − θ_base‖₂ over all shared floating-point tensors: how far a release sits from the base."""
    base_state = base.state_dict()
    total = sum(float((t - base_state[n]).double().pow(2).sum()) for n, t in model.state_dict().items()
                if t.is_floating_point() and n in base_state)
    return total ** 0.5
