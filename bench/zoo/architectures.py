"""Tiny causal LMs of several architectures, built from a seed with transformers' own classes."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

Family = Literal["llama", "gpt2"]

#: LoRA target modules per family: every linear map in attention and MLP.
LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
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
    else:  # pragma: no cover - guarded by the Literal type
        raise ValueError(f"unknown architecture family {arch.family!r}")
    return model
