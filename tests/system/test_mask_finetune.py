"""The PMP mask-estimation attack (attacks/mask_finetune.py): the estimator on weights whose mask is known,
the masked fine-tuning it runs, and the estimate against a real PMP release's private mask."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from fakes import gate_job
from safetensors.torch import load_file

from attacks.mask_finetune import MaskFinetuneConfig, constant_init_mask, estimate_mask, scale_mixture_mask
from bench.toolkit.finetuning import FinetuneSettings, train_snapshots
from bench.zoo.training import TrainSettings


def _overlap(estimate: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(IoU of the estimate with the truth, the IoU a random mask of the estimate's density expects)."""
    iou = float((estimate & truth).sum()) / max(1, int((estimate | truth).sum()))
    q, rho = float(estimate.float().mean()), float(truth.float().mean())
    return iou, q * rho / max(1e-12, q + rho - q * rho)


def test_the_scale_mixture_finds_the_entries_that_moved() -> None:
    """Initial noise N(0, 0.02²) everywhere (the scale the architecture's init rule gives), an update
    N(0, 0.1²) on a known 60 %: the wide component is the updated entries. The two scales overlap near zero
    (an update that lands an entry near its start looks untouched), so the estimate is far from exact."""
    generator = torch.Generator().manual_seed(0)
    init = 0.02 * torch.randn(200, 100, generator=generator)
    truth = torch.rand(200, 100, generator=generator) < 0.6
    released = init + truth * (0.1 * torch.randn(200, 100, generator=generator))
    estimate = scale_mixture_mask(released, 0.02, 100)
    iou, chance = _overlap(estimate, truth)
    assert iou > chance + 0.2, (iou, chance)


def test_a_vector_at_its_constant_init_is_read_exactly() -> None:
    values = torch.ones(64)
    values[[3, 10, 40]] = torch.tensor([1.2, 0.7, 1.01])
    assert constant_init_mask(values, 0.01).nonzero().flatten().tolist() == [3, 10, 40]
    moved = torch.linspace(0.5, 1.5, 64)  # no shared value: every entry moved
    assert bool(constant_init_mask(moved, 0.01).all())


def test_masked_fine_tuning_moves_only_the_mask(micro_zoo) -> None:
    base = micro_zoo.load_base("llama")
    tokenizer = micro_zoo.tokenizer("llama")
    generator = torch.Generator().manual_seed(1)
    mask = {name: torch.rand(p.shape, generator=generator) < 0.5 for name, p in base.named_parameters()}
    settings = FinetuneSettings("full", TrainSettings(steps=3, lr=1e-2, batch_size=4, seed=0), update_mask=mask)
    tuned = train_snapshots(copy.deepcopy(base), tokenizer, ["add 1+2=", "add 3+4="], ["3", "7"], settings, [3])[3]
    before, after = dict(base.named_parameters()), dict(tuned.named_parameters())
    moved_inside = 0
    for name, keep in mask.items():
        assert torch.equal(after[name][~keep], before[name][~keep]), f"{name}: an entry outside the mask moved"
        moved_inside += int((after[name][keep] != before[name][keep]).sum())
    assert moved_inside > 0
    with pytest.raises(ValueError, match="only full fine-tuning"):
        train_snapshots(base, tokenizer, ["a="], ["b"], FinetuneSettings("lora", settings.training, update_mask=mask), [1])


def test_a_fresh_random_model_shows_no_mask(micro_zoo) -> None:
    """Nothing to tell apart in an untrained model (the from-scratch control's release): the attacker
    trains every entry there, so its control is plain fine-tuning from scratch, not a frozen model."""
    base = micro_zoo.load_base("llama")
    fresh = type(base)(base.config)
    assert all(bool(mask.all()) for mask in estimate_mask(fresh).values())
    trained = estimate_mask(base)  # a plainly trained base moved its matrices: the mixture finds a wide scale
    assert any(not bool(mask.all()) for mask in trained.values())


def test_the_config_runs_the_grid_only() -> None:
    with pytest.raises(ValueError, match="grid only"):
        MaskFinetuneConfig(search="optuna")


@pytest.mark.slow
def test_the_estimate_beats_chance_on_a_real_pmp_release(ci_root) -> None:
    """On a PMP release (ρ 0.9) of the ci zoo's Llama-style base, the defense's own training with its private
    mask read back from the storage root, the estimate tells trained from untouched entries better than any
    random guess. The ci zoo, not the micro one: the estimator's premise is a trained entry that moved
    beyond the init's scale, and the micro base is barely trained (there the estimate is no better than
    chance, measured)."""
    from bench.harness.context import get_context
    from bench.harness.stages import load_release, private_dir, run_defense_job
    from bench.presets import load_preset

    ctx = get_context(load_preset("ci"), ci_root)
    job = gate_job("pmp", "full")  # the gate's `pmp_r0.9` release: `make test`'s gate reuses it
    assert job.model == "llama" and json.loads(job.defense_config)["rho"] == 0.9
    run_defense_job(ctx, job)
    private = load_file(str(private_dir(ctx, job) / "private.safetensors"))
    estimate = estimate_mask(load_release(ctx, job))
    truth = torch.cat([private[f"mask.{name}"].flatten() for name in estimate])
    guess = torch.cat([estimate[name].flatten() for name in estimate])
    assert 0.1 < float(truth.float().mean()) < 0.99, "no complement to find"
    # balanced accuracy (mean of the rates on trained and on untouched entries): 0.5 for any random guess
    # whatever its density; measured on default's PMP releases (ρ 0.9, three seeds): 0.65-0.67 on Llama
    balanced = (float((guess & truth).sum() / truth.sum()) + float((~guess & ~truth).sum() / (~truth).sum())) / 2
    iou, chance = _overlap(guess, truth)
    assert balanced > 0.55 and iou > chance, (balanced, iou, chance, float(guess.float().mean()))
