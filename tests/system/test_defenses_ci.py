"""Trap²'s acceptance numbers on the `ci` zoo (issue 6): utility kept and the loss at s = 0.5 raised, at the
paper's λ, against `none`'s zoo expert.

Split from tests/integration/test_defenses.py (whose tests run on tiny models and the micro zoo) so that pytest-xdist's
`--dist loadfile` can run these minutes of Trap² training on one worker while the other works through the rest.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fakes import gate_job, owner_of, protect_with

from bench.presets import load_preset
from defenses._training import batch_of, evaluate, scaled_update


@pytest.fixture(scope="module")
def ci_ctx(ci_root):
    """The ci zoo, shared with the other ci tests through conftest's session `ci_root`."""
    from bench.harness.context import get_context

    return get_context(load_preset("ci"), ci_root)


#: At the paper's λ = 0.01 and the zoo's 200-step expert budget, whether a trap forms on `length` is a
#: floating-point knife-edge, not a rule: measured on the pinned AVX2 path (2026-12-01), the s = 0.5 test loss
#: is 0.716 (full) / 0.760 (adapter) against `none`'s 0.752 / 0.796 — no trap — while an AVX-512 path formed
#: the adapter's trap. The leaderboard reports it per release (`trap_formed`); this test asserts only the
#: rule that holds on any CPU: the release keeps `none`'s utility. The trap itself is asserted at a budget
#: where it forms (below).


@pytest.mark.slow
@pytest.mark.parametrize("release_format", ["full", "adapter"])
def test_trap2_keeps_utility_at_the_paper_lambda(ci_ctx, release_format: str) -> None:
    """Issue 6 acceptance at the default λ: standalone utility no more than 0.02 below `none` (lm-eval, test
    split; Trap² picks its checkpoint on the owner's validation tail and may score above `none`, which is
    no loss of utility). The release is the regression gate's own `smoke` job, produced through the harness's
    release cache in the shared ci root, so the gate after pytest reuses it instead of training it again."""
    from bench.harness.stages import load_release, run_defense_job
    from bench.toolkit.evaluate import score

    job = gate_job("trap2", release_format)
    run_defense_job(ci_ctx, job)
    owner = owner_of(ci_ctx, "trap2", "merge", release_format)
    assert (owner.task, job.model) == (job.task, "llama")
    utility = {label: score(model, owner.tokenizer, [owner.task], ci_ctx.tasks)[owner.task]
               for label, model in (("none", owner.reference_release), ("trap2", load_release(ci_ctx, job)))}
    assert utility["trap2"] >= utility["none"] - 0.02, utility


def _check_trap(ci_ctx, release_format: str, margin: float, **config: Any) -> Any:
    """A Trap² release on the ci zoo keeps `none`'s utility (within 0.02) and its test loss at s = 0.5
    exceeds `none`'s by more than `margin`. Returns the owner and the release."""
    from bench.toolkit.evaluate import score

    owner = owner_of(ci_ctx, "trap2", "merge", release_format)
    release = protect_with("trap2", owner, **config)
    task, tokenizer = owner.task, owner.tokenizer
    utility = {label: score(model, tokenizer, [task], ci_ctx.tasks)[task]
               for label, model in (("none", owner.reference_release), ("trap2", release.model))}
    assert utility["trap2"] >= utility["none"] - 0.02, utility
    half = {label: _half_scale_loss(ci_ctx, owner, model)
            for label, model in (("none", owner.reference_release), ("trap2", release.model))}
    assert half["trap2"] > half["none"] + margin, half
    return owner, release


def _half_scale_loss(ci_ctx, owner, model) -> float:
    """Test loss on T_p of `W0 + ½·(W − W0)`: what a two-member average does to the update."""
    test = batch_of(owner.tokenizer, ci_ctx.split(owner.task, "test"))
    return evaluate(scaled_update(owner.base, model, 0.5), test)[1]


@pytest.fixture(scope="module")
def formed_trap(ci_ctx):
    """The trap itself, at a budget where it forms: the `paper` preset measured
    it on its 8-expert zoo (Llama-style `tail`, λ = 0.01, 800 steps: loss at s = 0.5 4.97 nats against 0.85
    for λ = 0 at the same budget). Here on the ci zoo's `length`, against `none`'s zoo expert (measured on
    the pinned path: 1.153 against 0.730 at 800 steps; 0.866 at 600, and no trap at 300 or 400)."""
    return _check_trap(ci_ctx, "full", margin=0.1, steps=800)  # the leaderboard's trap margin


@pytest.mark.slow
def test_trap2_full_forms_its_trap_at_the_paper_lambda_with_a_longer_budget(formed_trap) -> None:
    owner, release = formed_trap
    assert release.model is not owner.reference_release


@pytest.mark.slow
def test_the_untrap_fine_tune_disarms_a_formed_trap(ci_ctx, formed_trap) -> None:
    """Issue 29: the attacker's un-trap fine-tune (Trap²'s objective turned around, on attacker_train only)
    brings the release's loss at s = ½ back below the trapped release's, and keeps its skill at s = 1.
    Measured on the pinned path (100 steps, anchored): s = ½ loss 1.153 → 0.668 (`none`'s expert: 0.730),
    s = ¼ 1.106 → 0.929, accuracy 0.96 → 0.92; without the anchor at s = 1, 0.650 but accuracy 0.805."""
    from attacks.untrap_merge import UnTrapConfig, untrap
    from bench.toolkit.evaluate import score

    owner, release = formed_trap
    view = SimpleNamespace(release=release.model, base=owner.base, tokenizer=owner.tokenizer, seed=0,
                           attacker_train=ci_ctx.split(owner.task, "attacker_train"))
    untrapped = untrap(view, UnTrapConfig())
    trapped_half, untrapped_half = (_half_scale_loss(ci_ctx, owner, model) for model in (release.model, untrapped))
    assert untrapped_half < trapped_half, (untrapped_half, trapped_half)
    accuracy = {label: score(model, owner.tokenizer, [owner.task], ci_ctx.tasks)[owner.task]
                for label, model in (("trapped", release.model), ("untrapped", untrapped))}
    assert accuracy["untrapped"] >= accuracy["trapped"] - 0.05, accuracy
