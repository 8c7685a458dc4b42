"""align_to_base (attacks/align_to_base.py): a function-preserving re-parameterisation of a fake expert
(PaRaMS, Merge-Lock, or an inline head permutation with per-unit scales) is aligned back to the base.

Tiny random models (hidden 32, 2 layers) of both zoo families; the "expert" is the base plus a small
random update. Checked: the release computes what the expert computes, alignment brings it back to within
a small relative distance of the expert, and the aligned model still computes the same function.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

import attacks.align_to_base as align_to_base
from attacks.align_to_base import AlignConfig, AlignToBase, AlignToBaseConfig, align, relative_update, solve_full, solve_rope
from bench.plugins import AttackNotApplicable, PublicView, TaskData
from bench.zoo.layout import blocks, log_uniform, random_invertible, rope_commuting
from defenses.merge_lock import MergeLockConfig, lock
from defenses.params import ParamsConfig, reparameterise

LOGIT_TOLERANCE = 1e-4
UPDATE = 3e-3  # the fake expert's per-entry update, relative to each tensor's spread


def _tiny(kind: str) -> PreTrainedModel:
    torch.manual_seed(0)
    if kind == "gpt2":
        model: PreTrainedModel = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                                                            n_positions=32, bos_token_id=1, eos_token_id=2,
                                                            tie_word_embeddings=False))
    else:
        gqa = kind == "llama_gqa_bias"
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2 if gqa else 4,
                                             attention_bias=gqa, max_position_embeddings=32, bos_token_id=1,
                                             eos_token_id=2, pad_token_id=0))
    with torch.no_grad():  # biases and norm gains away from their 0/1 init, so every edit is exercised
        for name, parameter in model.named_parameters():
            if "bias" in name or "norm" in name or ".ln_" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def _expert(base: PreTrainedModel, seed: int = 1) -> PreTrainedModel:
    expert = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in expert.parameters():
            parameter.add_(UPDATE * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return expert


def _permute_groups_and_scale_units(model: PreTrainedModel, generator: torch.Generator) -> None:
    """What PaRaMS leaves out, written inline: permute key/value head groups (with the query heads that
    read them and the output columns they feed) and, on Llama, scale each MLP unit's up row by ±c and its
    down column by ±1/c (SwiGLU is linear in `up`)."""
    for block in blocks(model):
        d, per_group = block.head_dim, block.heads // block.kv_heads
        groups = torch.randperm(block.kv_heads, generator=generator).tolist()
        heads = [g * per_group + i for g in groups for i in range(per_group)]
        for out_map, order in ((block.k, groups), (block.v, groups), (block.q, heads)):
            rows = torch.cat([torch.arange(h * d, h * d + d) for h in order])
            weight, bias = out_map.get(0, len(order) * d)
            out_map.set(0, len(order) * d, weight[rows], bias[rows] if bias is not None else None)
        columns = torch.cat([torch.arange(h * d, h * d + d) for h in heads])
        block.o.set(0, block.heads * d, block.o.get(0, block.heads * d)[:, columns])
        if len(block.mlp_in) == 2:
            sign = torch.where(torch.rand(block.intermediate, generator=generator) < 0.3, -1.0, 1.0)
            factor = sign.double() * log_uniform(block.intermediate, 10.0, generator)
            up = block.mlp_in[1]
            weight, bias = up.get(0, block.intermediate)
            up.set(0, block.intermediate, weight * factor[:, None], bias * factor if bias is not None else None)
            block.mlp_out.set(0, block.intermediate, block.mlp_out.get(0, block.intermediate) / factor[None, :])


def _protect(expert: PreTrainedModel, defense: str) -> PreTrainedModel:
    release = copy.deepcopy(expert)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        if defense == "params":
            reparameterise(release, ParamsConfig(), generator)
        elif defense == "merge_lock":
            lock(release, MergeLockConfig(), generator)
        elif defense == "inline":
            _permute_groups_and_scale_units(release, generator)
            reparameterise(release, ParamsConfig(), generator)
    return release.eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(3, 64, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids).logits


def _distance(first: PreTrainedModel, second: PreTrainedModel) -> float:
    return relative_update(first.state_dict(), second.state_dict())


@pytest.mark.parametrize("defense", ["params", "merge_lock", "inline"])
@pytest.mark.parametrize("kind", ["llama", "llama_gqa_bias", "gpt2"])
def test_alignment_undoes_a_function_preserving_release(kind: str, defense: str) -> None:
    base = _tiny(kind)
    expert = _expert(base)
    release = _protect(expert, defense)
    assert float((_logits(release) - _logits(expert)).abs().max()) < LOGIT_TOLERANCE  # function preserved
    assert _distance(release, expert) > 0.1  # ... but far from the expert's (and the base's) coordinates

    aligned, report = align(release, base, AlignConfig())
    update = _distance(expert, base)
    assert _distance(aligned, expert) < 1e-3
    assert _distance(aligned, expert) < 0.5 * update  # the fine-tuning update is restored, not absorbed
    assert float((_logits(aligned) - _logits(release)).abs().max()) < LOGIT_TOLERANCE
    mixed = 2 * len(blocks(base)) * blocks(base)[0].kv_heads  # query-key and value-output per group
    assert report["transforms_unmixed"] == (mixed if defense == "merge_lock" else 0)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_an_unprotected_release_is_left_almost_as_it_is(kind: str) -> None:
    base = _tiny(kind)
    expert = _expert(base)
    aligned, report = align(expert, base, AlignConfig())
    assert report["mlp_units_moved"] == report["head_groups_moved"] == report["transforms_unmixed"] == 0
    assert _distance(aligned, expert) < 0.15 * _distance(expert, base)


def test_the_base_itself_aligns_to_itself() -> None:
    base = _tiny("llama")
    aligned, _ = align(base, base, AlignConfig())
    assert _distance(aligned, base) < 1e-6


def test_least_squares_recovers_a_known_transform() -> None:
    """Noise-free: x = M·y and q = p·M⁻¹ (the layouts of both problems), so the solve returns M⁻¹."""
    generator = torch.Generator().manual_seed(3)
    y = torch.randn(8, 40, generator=generator, dtype=torch.float64)
    p = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    for solver, (m, _) in ((solve_full, random_invertible(8, 4.0, generator)),
                           (solve_rope, rope_commuting(8, 4.0, generator))):
        m_inv = torch.linalg.inv(m)
        torch.testing.assert_close(solver(m @ y, y, p, p @ m_inv), m_inv)


def _data(task: str) -> TaskData:
    return TaskData([f"{task}{i}" for i in range(3)], ["0"] * 3)


def _view(release: PreTrainedModel, base: PreTrainedModel, others: dict[str, PreTrainedModel],
          release_format: str = "full", scores: list[float] | None = None) -> PublicView:
    pending = list(scores or [])

    def score_val(model, tasks: list[str]) -> dict[str, float]:
        value = pending.pop(0) if pending else 0.0
        return {task: value for task in tasks}

    return PublicView(track="merge", release_format=release_format, model_name="tiny", release=release, base=base,
                      tokenizer=None, task="p", attacker_train=_data("p"), attacker_val=_data("p"),
                      public_experts=others, public_experts_val={task: _data(task) for task in others}, seed=0,
                      score_val=score_val)


def test_other_families_and_adapter_releases_are_not_applicable() -> None:
    llama = _tiny("llama")
    with pytest.raises(AttackNotApplicable, match="full-weight"):
        AlignToBase().run(_view(llama, llama, {}, release_format="adapter"))
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=32, max_position_embeddings=32))
    with pytest.raises(AttackNotApplicable, match="gpt_neox"):
        AlignToBase().run(_view(neox, neox, {}))


def test_attack_merges_the_aligned_release_pinned_and_records_the_distances() -> None:
    """Task arithmetic with the release pinned at 1.0: merged = base + (aligned − base) + w·(other − base),
    w the weight the (scripted) validation scores chose."""
    base = _tiny("llama")
    expert, other = _expert(base, 1), _expert(base, 2)
    release = _protect(expert, "params")
    config = AlignToBaseConfig(weights=[0.5, 1.0])
    output = AlignToBase(config).run(_view(release, base, {"m": other}, scores=[0.2, 0.6]))
    knobs = output.knobs
    assert AlignToBase.family == "aligning" and align_to_base.AlignToBase.name == "align_to_base"
    assert knobs["method"] == "task_arithmetic" and knobs["weights"] == {"release": 1.0, "expert:m": 1.0}
    assert knobs["align_distance_before"] > 0.1 and knobs["align_distance_after"] < 1e-2
    assert knobs["evaluations"] == 2 and output.examples == 6
    aligned, _ = align(release, base, config)
    merged, b, a, o = (m.state_dict() for m in (output.models[1.0], base, aligned, other))
    for name in merged:
        torch.testing.assert_close(merged[name], a[name] + (o[name] - b[name]), rtol=1e-4, atol=1e-5)
