"""RegMean (attacks/regmean.py): the closed-form solve against hand-computed cases and its identities
(one member, identical Grams, identity Grams), the Gram hooks, and the attack end to end on tiny random
Llama- and GPT-2-style models (no zoo, no lm-eval)."""

from __future__ import annotations

import copy

import pytest
import torch
from fakes import perturbed, tiny_model
from transformers import PreTrainedModel

import attacks.regmean as regmean
from attacks.regmean import RegMean, RegMeanConfig, collect_grams, linear_layers, regmean_merge
from bench.plugins import PublicView, TaskData
from bench.zoo.tokenizer import build_tokenizer

TOKENIZER = build_tokenizer()


def _tiny(family: str, seed: int = 0, tied: bool = False) -> PreTrainedModel:
    return tiny_model(family, len(TOKENIZER), seed, tied)


def _perturbed(model: PreTrainedModel, seed: int, scale: float = 0.05) -> PreTrainedModel:
    return perturbed(model, seed, scale)


def _random_gram(size: int, seed: int) -> torch.Tensor:
    x = torch.randn(3 * size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ x


def _states(count: int) -> list[dict[str, torch.Tensor]]:
    """Members with a Linear weight (out 3, in 4), a Conv1D weight (in 4, out 5), a bias and an embedding."""
    generator = torch.Generator().manual_seed(7)
    return [{"lin.weight": torch.randn(3, 4, generator=generator), "conv.weight": torch.randn(4, 5, generator=generator),
             "lin.bias": torch.randn(3, generator=generator), "emb.weight": torch.randn(6, 4, generator=generator),
             "steps": torch.tensor(i)} for i in range(count)]


def _mean(states: list[dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    return torch.stack([state[name] for state in states]).mean(0)


def test_one_member_is_returned_unchanged() -> None:
    states = _states(1)
    grams = [{"lin.weight": _random_gram(4, 0), "conv.weight": _random_gram(4, 1)}]
    merged = regmean_merge(states, grams, alpha=0.9, transposed={"conv.weight"})
    for name, tensor in states[0].items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.3])
def test_identical_grams_give_the_plain_average(alpha: float) -> None:
    states = _states(3)
    gram = {"lin.weight": _random_gram(4, 0), "conv.weight": _random_gram(4, 1)}
    merged = regmean_merge(states, [gram] * 3, alpha=alpha, transposed={"conv.weight"})
    for name in ("lin.weight", "conv.weight", "lin.bias", "emb.weight"):
        torch.testing.assert_close(merged[name], _mean(states, name), rtol=1e-5, atol=1e-6)
    assert int(merged["steps"]) == 0  # a non-float tensor is the first member's


def test_identity_grams_give_the_plain_average() -> None:
    states = _states(2)
    eye = torch.eye(4, dtype=torch.float64)
    merged = regmean_merge(states, [{"lin.weight": eye, "conv.weight": eye}] * 2, transposed={"conv.weight"})
    for name in ("lin.weight", "conv.weight"):
        torch.testing.assert_close(merged[name], _mean(states, name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("alpha", "expected"), [(1.0, [0.4, 0.8]), (0.5, [3.25 / 5.75, 3.5 / 5.75])])
def test_solve_matches_a_hand_computed_two_by_two(alpha: float, expected: list[float]) -> None:
    """w₁ = (1, 0), w₂ = (0, 1), G₁ = [[2, 1], [1, 1]], G₂ = I.
    α = 1: (G₁ + G₂)⁻¹(G₁w₁ + G₂w₂) = [[3, 1], [1, 2]]⁻¹ (2, 2) = (0.4, 0.8).
    α = ½: G₁ → [[2, ½], [½, 1]], so [[3, ½], [½, 2]]⁻¹ (2, 1.5) = (3.25, 3.5) / 5.75."""
    g1 = torch.tensor([[2.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    g2 = torch.eye(2, dtype=torch.float64)
    linear = [{"w": torch.tensor([[1.0, 0.0]])}, {"w": torch.tensor([[0.0, 1.0]])}]  # nn.Linear: (out 1, in 2)
    merged = regmean_merge(linear, [{"w": g1}, {"w": g2}], alpha=alpha, ridge=0.0)
    torch.testing.assert_close(merged["w"], torch.tensor([expected]))
    conv = [{"w": state["w"].T.contiguous()} for state in linear]  # Conv1D: (in 2, out 1)
    merged = regmean_merge(conv, [{"w": g1}, {"w": g2}], alpha=alpha, ridge=0.0, transposed={"w"})
    torch.testing.assert_close(merged["w"], torch.tensor([expected]).T)


def test_alpha_zero_weighs_each_input_by_its_own_variance() -> None:
    """With only the diagonals left, each input column is a variance-weighted mean of the members."""
    states = [{"w": torch.tensor([[1.0, 2.0]])}, {"w": torch.tensor([[3.0, 6.0]])}]
    grams = [{"w": torch.tensor([[1.0, 5.0], [5.0, 3.0]], dtype=torch.float64)},
             {"w": torch.tensor([[3.0, -2.0], [-2.0, 1.0]], dtype=torch.float64)}]
    merged = regmean_merge(states, grams, alpha=0.0, ridge=0.0)
    torch.testing.assert_close(merged["w"], torch.tensor([[(1 * 1 + 3 * 3) / 4, (3 * 2 + 1 * 6) / 4]]))


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one Gram set per member"):
        regmean_merge(_states(2), [{}])
    with pytest.raises(ValueError, match="same layers"):
        regmean_merge(_states(2), [{"lin.weight": torch.eye(4)}, {}])


def test_linear_layers_finds_conv1d_transposed_and_leaves_a_tied_head_to_averaging() -> None:
    layers = linear_layers(_tiny("gpt2", tied=True))
    assert layers["transformer.h.0.attn.c_attn.weight"] is True
    assert "lm_head.weight" not in layers
    assert linear_layers(_tiny("gpt2"))["lm_head.weight"] is False
    llama = linear_layers(_tiny("llama"))
    assert llama["model.layers.0.self_attn.q_proj.weight"] is False and len(llama) == 8


def test_grams_ignore_padding_and_sum_over_examples() -> None:
    """Batched with right padding, the Grams equal the sum over examples run one by one."""
    model = _tiny("llama")
    layers = linear_layers(model)
    texts = ["12+3=", "a", "sort: dcba"]
    batched, tokens = collect_grams(model, TOKENIZER, texts, layers, batch_size=3, normalize=False)
    assert tokens == sum(len(text) for text in texts)
    alone = [collect_grams(model, TOKENIZER, [text], layers, normalize=False)[0] for text in texts]
    for name in layers:  # float32 forwards of a padded batch round differently: compare at its precision
        expected = sum(gram[name] for gram in alone)
        torch.testing.assert_close(batched[name], expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    down = batched["model.layers.0.mlp.down_proj.weight"]
    assert down.shape == (32, 32) and torch.allclose(down, down.T)


def _view(release: PreTrainedModel, base: PreTrainedModel, others: dict[str, PreTrainedModel]) -> PublicView:
    def data(task: str) -> TaskData:
        return TaskData([f"{task} {i}:" for i in range(5)], [str(i) for i in range(5)])

    return PublicView(track="merge", release_format="full", model_name="tiny", release=release, base=base,
                      tokenizer=TOKENIZER, task="p", attacker_train=data("p"), attacker_val=data("pv"),
                      public_experts=others, public_experts_val={task: data(task) for task in others}, seed=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attack_merges_with_each_members_own_data_and_records_its_knobs(family: str) -> None:
    base = _tiny(family)
    release, other = _perturbed(base, 1), _perturbed(base, 2)
    output = RegMean(RegMeanConfig(max_examples=4)).run(_view(release, base, {"m": other}))
    merged = output.models[1.0]
    assert output.knobs["method"] == "regmean" and output.knobs["alpha"] == 0.9
    assert output.knobs["examples_per_member"] == {"release": 4, "expert:m": 4} and output.examples == 8
    assert RegMean.family == "data" and RegMean.track == "merge" and regmean.RegMean.name == "regmean"
    state, first, second = merged.state_dict(), release.state_dict(), other.state_dict()
    for name in state:  # non-linear tensors are averaged; linear weights differ from the average
        mean = (first[name] + second[name]) / 2
        if name in linear_layers(base):
            assert not torch.allclose(state[name], mean, atol=1e-4)
        else:
            torch.testing.assert_close(state[name], mean)


def test_attack_with_identical_members_returns_the_member() -> None:
    base = _tiny("gpt2")
    release = _perturbed(base, 1)
    merged = RegMean().run(_view(release, base, {"m": copy.deepcopy(release)})).models[1.0]
    for name, tensor in release.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)
