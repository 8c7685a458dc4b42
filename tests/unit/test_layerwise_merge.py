"""The layer-wise merge (issue 29): its layer groups, that merging group by group is mergekit's own merge,
and the per-layer scale it can undo and a shared coefficient cannot (its validity on the ci zoo:
tests/system/test_issue29_attacks_ci.py)."""

from __future__ import annotations

import pytest
import torch

from attacks.layerwise_merge import OUTSIDE, LayerwiseMergeConfig, layer_groups
from bench.toolkit.merging import merge_state_dicts


def test_layer_groups_follow_the_block_index_of_each_architecture() -> None:
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight",
             "model.layers.10.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight",
             "transformer.h.2.attn.c_attn.weight", "transformer.wte.weight"]
    groups = layer_groups(names)
    assert list(groups) == [OUTSIDE, "layer 0", "layer 1", "layer 2", "layer 10"]
    assert groups[OUTSIDE] == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                               "transformer.wte.weight"]
    assert groups["layer 2"] == ["transformer.h.2.attn.c_attn.weight"]


def test_a_random_method_is_refused() -> None:
    with pytest.raises(ValueError, match="draws random numbers"):
        LayerwiseMergeConfig(method="dare_ties")


def _state(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(4, 4, generator=generator) for name in
            ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight")}


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_merging_group_by_group_is_the_one_shot_merge(method: str) -> None:
    base, members = _state(0), {"release": _state(1), "expert:b": _state(2)}
    parameters = {"weight": {"release": 0.7, "expert:b": 1.3}, "normalize": False}
    if method == "ties":
        parameters["density"] = 0.5
    whole = merge_state_dicts(base, members, method, parameters)
    for names in layer_groups(list(base)).values():
        part = merge_state_dicts({n: base[n] for n in names}, {m: {n: s[n] for n in names} for m, s in members.items()},
                                 method, parameters)
        for name in names:
            torch.testing.assert_close(part[name], whole[name], rtol=0, atol=0)


def test_a_per_layer_coefficient_undoes_a_per_layer_scale_that_no_shared_one_can() -> None:
    """The threat: a release whose update is scaled differently per layer (here layer 0 doubled). Weight ½ on
    layer 0 and 1 elsewhere gives back the unscaled update exactly; a single shared weight cannot."""
    base, expert = _state(0), _state(1)
    release = {n: base[n] + (2.0 if ".layers.0." in n else 1.0) * (expert[n] - base[n]) for n in base}
    groups = layer_groups(list(base))
    fitted = {}
    for group, names in groups.items():
        weight = 0.5 if group == "layer 0" else 1.0
        fitted.update(merge_state_dicts({n: base[n] for n in names}, {"release": {n: release[n] for n in names}},
                                        "task_arithmetic", {"weight": weight, "normalize": False}))
    for name in base:
        torch.testing.assert_close(fitted[name], expert[name])
    for shared in (0.5, 1.0):
        merged = merge_state_dicts(base, {"release": release}, "task_arithmetic", {"weight": shared, "normalize": False})
        assert any(not torch.allclose(merged[n], expert[n]) for n in base)
