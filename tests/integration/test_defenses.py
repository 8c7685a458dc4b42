"""Defenses of DESIGN §3 (issue 6): Trap², PMP and the baselines. Fast tests check the mechanics on tiny
models (Trap²'s scaled point, the dropout fork, the PMP mask, logit-preserving re-parameterisations); slow ones
run `protect` on the micro zoo. Trap²'s acceptance numbers on the `ci` zoo: tests/system/test_defenses_ci.py."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import owner_of, protect_with
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from bench.plugins import DEFENSES, Attack, AttackOutput, OwnerView, PublicView, register_attack
from bench.presets import Preset
from bench.presets.grid import GridConfig, PluginSpec
from bench.zoo.architectures import build_model
from bench.zoo.layout import blocks, random_invertible
from bench.zoo.training import TokenisedBatch
from defenses._training import batch_of, rows_loss, same_randomness, scaled_update
from defenses.anti_finetune import proxy_task
from defenses.merge_lock import MergeLockConfig, lock
from defenses.params import ParamsConfig, reparameterise
from defenses.pmp import global_top_mask, iou
from defenses.trap2 import (
    Trap2Config,
    add_scaled_loss_gradient,
    at_scale,
    sample_scale,
    scaled_parameters,
    scaled_targets,
)

LOGIT_TOLERANCE = 1e-4


# ----------------------------------------------------------------------------- tiny models


def _tiny(kind: str) -> PreTrainedModel:
    """Random tiny models of both zoo families, plus Llama with grouped-query attention and biases."""
    torch.manual_seed(0)
    if kind == "gpt2":
        model: PreTrainedModel = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_inner=128,
                                                            n_positions=64, bos_token_id=1, eos_token_id=2))
    else:
        gqa = kind == "llama_gqa_bias"
        model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=8 if gqa else 4, num_key_value_heads=2 if gqa else 4,
                                             attention_bias=gqa, max_position_embeddings=64, bos_token_id=1,
                                             eos_token_id=2, pad_token_id=0))
    with torch.no_grad():  # biases and norm gains away from their 0/1 init, so every edit is exercised
        for name, parameter in model.named_parameters():
            if "bias" in name or "norm" in name or ".ln_" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def _max_logit_difference(first: torch.nn.Module, second: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float((first(ids).logits - second(ids).logits).abs().max())


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 100, (4, 48), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- re-parameterisation baselines


@pytest.mark.parametrize("kind", ["llama", "llama_gqa_bias", "gpt2"])
@pytest.mark.parametrize("defense", ["params", "merge_lock"])
def test_reparameterisations_preserve_every_logit(kind: str, defense: str) -> None:
    model = _tiny(kind)
    locked = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    key = (reparameterise(locked, ParamsConfig(), generator) if defense == "params"
           else lock(locked, MergeLockConfig(), generator))
    assert key and all(isinstance(value, torch.Tensor) for value in key.values())
    assert _max_logit_difference(model, locked, _ids()) <= LOGIT_TOLERANCE
    moved = [name for (name, a), b in zip(model.named_parameters(), locked.parameters(), strict=True)
             if not torch.allclose(a, b)]
    assert any("mlp" in name or "attn" in name for name in moved), "the release must actually differ"


def test_llama_query_key_transform_must_commute_with_rope() -> None:
    """Control for the test above: a general invertible query–key transform (fine on GPT-2) changes
    Llama's logits, because RoPE's position rotations do not commute with it."""
    model = _tiny("llama")
    broken = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    for block in blocks(broken):
        d = block.head_dim
        for head in range(block.heads):
            m, m_inv = random_invertible(d, 4.0, generator)
            block.q.left_multiply(head * d, (head + 1) * d, m)
            block.k.left_multiply(head * d, (head + 1) * d, m_inv.T)
    assert _max_logit_difference(model, broken, _ids()) > 100 * LOGIT_TOLERANCE


# ----------------------------------------------------------------------------- Trap² mechanics


def test_trap2_scale_avoids_the_nominal_neighbourhood() -> None:
    config = Trap2Config()
    rng = random.Random(0)
    draws = [sample_scale(config, rng) for _ in range(20_000)]
    assert all(config.s_min <= s <= 1 - config.delta or 1 + config.delta <= s <= config.s_max for s in draws)
    below = sum(s < 1 for s in draws) / len(draws)
    assert abs(below - 0.9 / 1.85) < 0.02, "each interval is drawn in proportion to its length"


def _tiny_adapter(base: PreTrainedModel) -> PeftModel:
    adapter = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    return adapter


@pytest.mark.parametrize("release_format", ["full", "adapter"])
def test_trap2_scaled_point_and_its_gradient(release_format: str) -> None:
    """The in-place scaled pass equals the model holding W0 + s·ΔW (full) or s·B (LoRA), leaves the
    weights exactly as they were, and its gradient equals autograd through `functional_call`."""
    base = _tiny("llama")
    ids = _ids()
    batch = TokenisedBatch(ids, torch.ones_like(ids), ids.clone())
    rows = torch.arange(ids.shape[0])
    if release_format == "full":
        model: torch.nn.Module = copy.deepcopy(base)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        anchor: dict[str, torch.Tensor] | None = {name: p.detach().clone() for name, p in base.named_parameters()}
    else:
        model, anchor = _tiny_adapter(base), None
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    targets = scaled_targets(model, anchor)
    with torch.no_grad(), at_scale(targets, 0.5):
        in_place = model(ids).logits
    assert torch.allclose(in_place, scaled_update(base, model, 0.5)(ids).logits, atol=1e-5)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())

    parameters = [p for p in model.parameters() if p.requires_grad]
    reference = torch.autograd.grad(rows_loss(model, batch, rows, scaled_parameters(model, anchor, 0.5)), parameters)
    for p in parameters:
        p.grad = None
    add_scaled_loss_gradient(lambda: rows_loss(model, batch, rows), parameters, targets, 0.5, -0.1)
    for p, expected in zip(parameters, reference, strict=True):
        assert torch.allclose(p.grad, -0.1 * expected, atol=1e-6, rtol=1e-4)


def test_same_randomness_replays_dropout() -> None:
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                       resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)).train()
    ids = _ids()
    with same_randomness() as replay:
        first = model(ids).logits
        replay()
        second = model(ids).logits
    assert torch.equal(first, second)
    assert not torch.equal(model(ids).logits, first), "dropout is active, so only the replay makes them equal"


# ----------------------------------------------------------------------------- PMP and anti-fine-tuning mechanics


def test_global_top_mask_density_and_iou() -> None:
    gradients = [torch.randn(10, 10), torch.randn(50)]
    mask = global_top_mask(gradients, 0.3)
    assert int(mask.sum()) == 45
    flat = torch.cat([g.reshape(-1).abs() for g in gradients])
    assert flat[mask].min() >= flat[~mask].max()
    assert iou(mask, mask) == 1.0 and iou(mask, ~mask) == 0.0


def test_proxy_tasks_come_from_owner_data_only() -> None:
    from bench.plugins import TaskData

    data = TaskData(["copy abc=", "succ 19="], ["abc", "20"])
    proxy = proxy_task(data, random.Random(0))
    assert [p.split(" ", 1)[1] for p in proxy.prompts] == data.prompts
    assert [len(a) for a in proxy.answers] == [3, 2] and proxy.answers != data.answers
    assert proxy.answers[1].isdigit() and proxy.answers[0].islower()


# ----------------------------------------------------------------------------- micro zoo: protect end to end


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["params", "merge_lock"])
def test_reparameterised_zoo_experts_keep_their_logits(micro_ctx, family: str, name: str) -> None:
    """Both zoo families, through `protect`: logits within 1e-4, the key kept private, far from the base."""
    owner = owner_of(micro_ctx, name, "merge", "full", family)
    release = protect_with(name, owner)
    ids = batch_of(owner.tokenizer, owner.owner_val).input_ids[:16]
    assert _max_logit_difference(owner.reference_release, release.model, ids) <= LOGIT_TOLERANCE
    assert release.private and release.notes["distance_to_base"] > 3 * release.notes["expert_distance_to_base"]
    assert DEFENSES.get(name)().supports("merge", "adapter", family) is False


@pytest.mark.slow
@pytest.mark.parametrize("release_format", ["adapter", "full"])
def test_trap2_runs_with_the_expert_recipe(micro_ctx, release_format: str) -> None:
    owner = owner_of(micro_ctx, "trap2", "merge", release_format)
    release = protect_with("trap2", owner)
    assert isinstance(release.model, PeftModel) == (release_format == "adapter")
    expected = owner.recipe.lora.training.steps if release_format == "adapter" else owner.recipe.expert_training.steps
    assert release.notes["steps"] == expected and release.notes["skipped_steps"] == 0
    assert all(torch.isfinite(t).all() for t in release.model.state_dict().values() if t.is_floating_point())


@pytest.mark.slow
def test_trap2_objective_raises_the_loss_at_rescaled_points(micro_ctx) -> None:
    """The mechanism, apart from any zoo's noise: with the same data, seed and budget, a positive λ
    leaves the owner's validation loss at s = 0.5 above that of λ = 0 (plain fine-tuning), and no higher
    at s = 1 than it is at s = 0.5."""
    from bench.zoo.config import TrainingConfig

    owner = owner_of(micro_ctx, "trap2", "merge", "full")
    training = TrainingConfig(steps=40, lr=3e-3, batch_size=32, replay_fraction=1.0)
    owner.recipe = owner.recipe.model_copy(update={"expert_training": training})
    plain = protect_with("trap2", owner, **{"lambda": 0.0}).notes
    trapped = protect_with("trap2", owner, **{"lambda": 1.0}).notes
    assert trapped["val_loss_at_0.5"] > plain["val_loss_at_0.5"] + 0.05, (plain, trapped)
    assert trapped["val_loss"] < trapped["val_loss_at_0.5"]


def _zoo_init(owner: OwnerView) -> PreTrainedModel:
    entry = owner.recipe.models[owner.model_name]
    tok = owner.tokenizer
    return build_model(entry.architecture, len(tok), owner.recipe.seed,
                       {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                        "eos_token_id": tok.eos_token_id})


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pmp_frozen_keeps_every_complement_entry_at_init(micro_ctx, family: str) -> None:
    owner = owner_of(micro_ctx, "pmp", "finetune", "full", family)
    release = protect_with("pmp", owner, rho=0.5, complement="frozen", mask_max_steps=10)
    init = dict(_zoo_init(owner).named_parameters())
    trained, total = 0, 0
    for name, parameter in release.model.named_parameters():
        mask = release.private[f"mask.{name}"]
        assert mask.dtype == torch.bool and mask.shape == parameter.shape
        assert torch.equal(parameter[~mask], init[name][~mask]), name
        trained += int((parameter[mask] != init[name][mask]).sum())
        total += mask.numel()
    assert sum(int(m.sum()) for m in release.private.values()) == round(0.5 * total)
    assert trained > 0.25 * total, "the masked half is trained"
    assert release.notes["mask_stop"] in {"iou", "step_cap"} and release.notes["mask_steps"] <= 10


@pytest.mark.slow
def test_pmp_projected_shrinks_the_complement_into_the_ball(micro_ctx) -> None:
    owner = owner_of(micro_ctx, "pmp", "finetune", "full")
    release = protect_with("pmp", owner, rho=0.5, complement="projected", radius=0.5, mask_max_steps=5)
    init = dict(_zoo_init(owner).named_parameters())
    shrunk = 0
    for name, parameter in release.model.named_parameters():
        complement = ~release.private[f"mask.{name}"]
        assert float(parameter[complement].norm()) <= 0.5 + 1e-4, name
        shrunk += int(float(init[name][complement].norm()) > 0.5)
    assert shrunk > 0


@pytest.mark.slow
def test_pmp_radius_fraction_shrinks_each_complement_by_that_fraction(micro_ctx) -> None:
    """`radius_fraction` carries the code's shrinkage to our init scale: every tensor's complement ends at
    that fraction of its norm at the init (it gets no gradient, so the first projection is the last)."""
    owner = owner_of(micro_ctx, "pmp", "finetune", "full")
    release = protect_with("pmp", owner, rho=0.5, complement="projected", radius_fraction=0.25, mask_max_steps=5,
                       weight_decay=0.1)
    init = dict(_zoo_init(owner).named_parameters())
    assert release.notes["weight_decay"] == 0.1 and release.notes["radius_fraction"] == 0.25
    for name, parameter in release.model.named_parameters():
        complement = ~release.private[f"mask.{name}"]
        if complement.any() and float(init[name][complement].norm()) > 0:
            assert float(parameter[complement].norm()) == pytest.approx(
                0.25 * float(init[name][complement].norm()), rel=1e-4), name


@pytest.mark.slow
def test_pmp_frozen_mask_is_readable_from_the_public_init(micro_ctx) -> None:
    """A finding, not a guarantee: the zoo's init seed is public, so rebuilding the init and comparing
    reads the `frozen` complement (hence the private mask) straight off the release. With `init: secret`
    the exact comparison finds nothing."""
    owner = owner_of(micro_ctx, "pmp", "finetune", "full")
    init = dict(_zoo_init(owner).named_parameters())
    for mode, readable in (("zoo", True), ("secret", False)):
        release = protect_with("pmp", owner, rho=0.5, mask_max_steps=5, init=mode)
        recovered = {name: p != init[name] for name, p in release.model.named_parameters()}
        exact = all(torch.equal(recovered[name], release.private[f"mask.{name}"]) for name in recovered)
        assert exact is readable, mode


@pytest.mark.slow
def test_anti_finetune_runs_and_reports_its_probe(micro_ctx) -> None:
    owner = owner_of(micro_ctx, "anti_finetune", "finetune", "full")
    release = protect_with("anti_finetune", owner, outer_steps=3, inner_steps=2, probe_steps=2, proxies=2)
    assert {"before_probe_loss", "after_probe_loss", "after_capability_val_acc"} <= set(release.notes)
    assert all(torch.isfinite(t).all() for t in release.model.state_dict().values() if t.is_floating_point())


def test_defenses_declare_tracks_formats_and_families() -> None:
    expected = {"trap2": ({"merge"}, {"adapter", "full"}), "pmp": ({"finetune"}, {"full"}),
                "params": ({"merge"}, {"full"}), "merge_lock": ({"merge"}, {"full"}),
                "anti_finetune": ({"finetune"}, {"full"})}
    for name, (tracks, formats) in expected.items():
        cls = DEFENSES.get(name)
        assert set(cls.tracks) == tracks and set(cls.formats) == formats, name
        module_doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
        assert "arXiv" in module_doc or "ICCV" in module_doc, f"{name} must cite its paper"
        assert "Tracks:" in module_doc and "Formats:" in module_doc and "Architectures:" in module_doc, name
    assert not DEFENSES.get("params")().supports("merge", "full", "mamba")


# ----------------------------------------------------------------------------- information boundary (harness)

#: (where, tensor) for every tensor and every file path the finetune snoop could reach, per run.
REACHED: list[dict[str, Any]] = []


@register_attack
class FinetuneSnoop(Attack):
    """Records everything reachable from a finetune-track public view, then returns the release as is."""

    name = "snoop_finetune"
    description = "test plugin: records the public view's tensors and files for a private-mask search"
    track = "finetune"
    family = "finetune"

    def run(self, view: PublicView) -> AttackOutput:
        from snooper import Snooper  # the merge-track snooper's traversal, reused

        class Recorder(Snooper):
            def __init__(self) -> None:
                super().__init__()
                self.reached: list[torch.Tensor] = []

            def check_tensor(self, tensor: torch.Tensor, where: str) -> None:
                super().check_tensor(tensor, where)
                self.reached.append(tensor.detach().clone())

        recorder = Recorder()
        recorder.visit(view, "view")
        files = sorted({p for root in recorder.paths for p in ([root] if root.is_file() else root.rglob("*"))
                        if p.is_file()})
        REACHED.append({"tensors": recorder.reached, "files": files, "findings": recorder.findings})
        model = copy.deepcopy(view.release)
        # a zero-step "full" fine-tune as far as the leaderboard's schema is concerned
        knobs = {"method": "full", "lr": 0.0, "steps": 0}
        return AttackOutput(models={f: model for f in view.budget_fractions}, knobs=knobs)


@pytest.mark.slow
def test_pmp_mask_is_not_reachable_from_any_attack(micro_run_root: Path, micro_preset: Preset, tmp_path: Path) -> None:
    """DESIGN §2 through the harness: the mask is stored privately; no tensor, string or file an attack
    is handed holds it (as a tensor, or as its bytes in a file)."""
    from bench.report.leaderboard import run_and_write

    REACHED.clear()
    grid = GridConfig(defenses=[PluginSpec(name="pmp", config={"rho": 0.5, "mask_max_steps": 5})],
                      merge_attacks=[], finetune_attacks=[PluginSpec(name="snoop_finetune")], models=["llama"],
                      seeds=[0])
    summary = run_and_write(micro_preset.model_copy(update={"grid": grid}), micro_run_root, tmp_path / "run")
    assert summary.failed == 0
    private = sorted((micro_run_root / "private").glob("pmp-*/private.safetensors"))
    assert len(private) == 1
    masks = {name: tensor for name, tensor in load_file(str(private[0])).items() if name.startswith("mask.")}
    assert masks and all(t.dtype == torch.bool for t in masks.values())
    needles = [t.to(torch.uint8).numpy().tobytes() for t in masks.values() if t.numel() >= 256]
    assert needles and any(needle in private[0].read_bytes() for needle in needles), "detector control"

    # the pmp release and its from-scratch control are attacked once per downstream task each
    assert len(REACHED) == 2 * len(micro_preset.zoo.downstream_tasks)
    for run in REACHED:
        assert run["findings"] == [], run["findings"]
        assert run["tensors"] and run["files"]
        for tensor in run["tensors"]:
            for name, mask in masks.items():
                if tensor.shape == mask.shape:
                    assert not torch.equal(tensor != 0, mask), f"a reachable tensor equals mask {name}"
        for path in run["files"]:
            data = path.read_bytes()
            assert not any(needle in data for needle in needles), f"{path} holds mask bytes"
    metrics = json.loads(next((micro_run_root / "releases").glob("pmp-*/metrics.json")).read_text())
    assert metrics["status"] == "ok" and metrics["notes"]["mask_stop"] in {"iou", "step_cap"}
