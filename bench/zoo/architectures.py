"""Tiny causal LMs of several architectures, built from a seed with transformers' own classes.

Two transformers (Llama- and GPT-2-style) and one state-space model (Mamba): Trap²'s claim to be
architecture-agnostic, against the transformer-specific re-parameterisations, needs a model without
attention. Mamba runs transformers' pure-PyTorch path on CPU (no CUDA kernels); with the `mambapy`
package installed its parallel scan replaces the per-token loop (same outputs to float rounding).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    PreTrainedModel,
)
from transformers.utils.import_utils import is_mambapy_available

from bench.runtime.device import compute_device

Family = Literal["llama", "gpt2", "mamba"]
FAMILIES: tuple[str, ...] = ("llama", "gpt2", "mamba")
#: Families built of attention and MLP blocks (what transformer-specific defenses and attacks need).
TRANSFORMER_FAMILIES: frozenset[str] = frozenset({"llama", "gpt2"})

#: LoRA target modules per family: every linear map in attention and MLP; Mamba's input, state (x → Δ, B,
#: C) and Δ projections (peft refuses `out_proj` and `conv1d` on Mamba: its fused kernel reads their
#: weights directly, bypassing an adapter).
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "mamba": ["in_proj", "x_proj", "dt_proj"],
}


class ArchitectureConfig(BaseModel):
    """Shape of one tiny model. Hidden size 32–64 keeps CI fast; `default` uses a little more."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Family
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)
    max_positions: int = Field(64, ge=16)
    state_size: int = Field(16, ge=1, description="Mamba: SSM state per channel (transformers ignore it)")
    expand: int = Field(2, ge=1, description="Mamba: inner width = expand × hidden size (transformers ignore it)")

    @model_serializer(mode="wrap")
    def _only_own_fields(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A transformer's dump (and so its zoo cache key) leaves out Mamba's fields, which it never reads."""
        data = handler(self)
        if self.family != "mamba":
            data.pop("state_size", None)
            data.pop("expand", None)
        return data


def build_model(arch: ArchitectureConfig, vocab_size: int, seed: int, special_ids: dict[str, int]) -> PreTrainedModel:
    """A freshly initialised model; the same seed gives the same weights on every machine."""
    torch.manual_seed(seed)
    if arch.family == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=arch.hidden_size,
            intermediate_size=arch.intermediate_size,
            num_hidden_layers=arch.num_layers,
            num_attention_heads=arch.num_heads,
            num_key_value_heads=arch.num_heads,
            max_position_embeddings=arch.max_positions,
            tie_word_embeddings=False,
            **special_ids,
        )
        model: PreTrainedModel = LlamaForCausalLM(config)
    elif arch.family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size,
            n_embd=arch.hidden_size,
            n_layer=arch.num_layers,
            n_head=arch.num_heads,
            n_inner=arch.intermediate_size,
            n_positions=arch.max_positions,
            # GPT-2's default dropout of 0.1 cripples a model this small (it barely learned in 800 steps);
            # Llama-style configs default to no dropout, so both families now train alike.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=False,
            **special_ids,
        )
        model = GPT2LMHeadModel(config)
    elif arch.family == "mamba":
        config = MambaConfig(
            vocab_size=vocab_size,
            hidden_size=arch.hidden_size,
            state_size=arch.state_size,
            num_hidden_layers=arch.num_layers,
            expand=arch.expand,
            conv_kernel=4,
            tie_word_embeddings=False,
            use_mambapy=is_mambapy_available(),
            **special_ids,
        )
        model = MambaForCausalLM(config)
    else:  # pragma: no cover - guarded by the Literal type
        raise ValueError(f"unknown architecture family {arch.family!r}")
    return model.to(compute_device())  # initialised on the CPU (the same weights everywhere), then placed
