"""Trap²'s acceptance numbers on the `ci` zoo (issue 6): utility kept and the loss at s = 0.5 raised, at the
paper's λ, against `none`'s zoo expert.

Split from tests/test_defenses.py (whose tests run on tiny models and the micro zoo) so that pytest-xdist's
`--dist loadfile` can run these minutes of Trap² training on one worker while the other works through the rest.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.harness.grid import DefenseJob
from bench.plugins import DEFENSES, OwnerView
from bench.presets import load_preset
from defenses._training import batch_of, evaluate, scaled_update


def _owner(ctx, defense: str, track: str, release_format: str, model: str = "llama") -> OwnerView:
    """The owner's view of one job; the merge track protects the zoo's first expert task."""
    from bench.harness.stages import owner_view

    task = ctx.preset.zoo.expert_tasks[0] if track == "merge" else None
    return owner_view(ctx, DefenseJob(defense, defense, "{}", track, release_format, model, task, 0))


def _protect(name: str, owner: OwnerView, **config: Any):
    cls = DEFENSES.get(name)
    return cls(cls.Config.model_validate(config)).protect(owner)


@pytest.fixture(scope="module")
def ci_ctx(ci_root):
    """The ci zoo, shared with the other ci tests through conftest's session `ci_root`."""
    from bench.harness.context import get_context

    return get_context(load_preset("ci"), ci_root)


#: Measured on the ci zoo of zoo format 4 (llama, `length`): the full-format release keeps its utility
#: (0.925 vs 0.92) but its test loss at s = 0.5 is 0.716 against `none`'s 0.752 — at the paper's λ = 0.01
#: no trap forms within the zoo's 200-step expert budget (commit 7c930c2's zoo: 0.564 vs 0.579). The adapter
#: release passes.
FULL_AT_PAPER_LAMBDA = pytest.mark.xfail(strict=False, reason="no trap at λ = 0.01 within the ci expert budget "
                                         "(s = 0.5 loss 0.716 vs none 0.752, measured); see the issue-6 report")
#: Measured 2026-12-01 on the ci zoo on the AVX2 code path (base `length` 0.160), the path bench.numerics now
#: pins on every x86 machine: the adapter release's test loss at s = 0.5 is 0.760 against `none`'s 0.796, so
#: at λ = 0.01 no trap forms on `length` in either format (on an AVX-512 path the adapter's trap formed: a
#: knife-edge). Not strict: the outcome is a floating-point finding, not a rule, and other instruction
#: sets may land on either side. The leaderboard flags such releases (`trap_formed`).
ADAPTER_AT_PAPER_LAMBDA = pytest.mark.xfail(strict=False, reason="no trap at λ = 0.01 on the adapter either "
                                            "(s = 0.5 loss 0.760 vs none 0.796, measured 2026-12-01)")


@pytest.mark.slow
@pytest.mark.parametrize("release_format", [pytest.param("full", marks=FULL_AT_PAPER_LAMBDA),
                                            pytest.param("adapter", marks=ADAPTER_AT_PAPER_LAMBDA)])
def test_trap2_keeps_utility_and_raises_the_loss_at_half_scale(ci_ctx, release_format: str) -> None:
    """Issue 6 acceptance at the default λ: standalone utility no more than 0.02 below `none` (lm-eval, test
    split; Trap² picks its checkpoint on the owner's validation tail and may score above `none`, which is
    no loss of utility) and a higher loss than `none` at s = 0.5 (the property Trap² trains for)."""
    _check_trap(ci_ctx, release_format, margin=0.0)


def _check_trap(ci_ctx, release_format: str, margin: float, **config: Any) -> None:
    """A Trap² release on the ci zoo keeps `none`'s utility (within 0.02) and its test loss at s = 0.5 exceeds
    `none`'s by more than `margin`."""
    from bench.evaluate import score

    owner = _owner(ci_ctx, "trap2", "merge", release_format)
    release = _protect("trap2", owner, **config)
    task, tokenizer = owner.task, owner.tokenizer
    utility = {label: score(model, tokenizer, [task], ci_ctx.tasks)[task]
               for label, model in (("none", owner.reference_release), ("trap2", release.model))}
    assert utility["trap2"] >= utility["none"] - 0.02, utility
    test = batch_of(tokenizer, ci_ctx.split(task, "test"))
    half = {label: evaluate(scaled_update(owner.base, model, 0.5), test)[1]
            for label, model in (("none", owner.reference_release), ("trap2", release.model))}
    assert half["trap2"] > half["none"] + margin, half


@pytest.mark.slow
def test_trap2_full_forms_its_trap_at_the_paper_lambda_with_a_longer_budget(ci_ctx) -> None:
    """The full-format half of the xfail above, at a budget where the trap forms: the `paper` preset measured
    it on its 8-expert zoo (Llama-style `tail`, λ = 0.01, 800 steps: loss at s = 0.5 4.97 nats against 0.85
    for λ = 0 at the same budget). Here on the ci zoo's `length`, against `none`'s zoo expert."""
    _check_trap(ci_ctx, "full", margin=0.1, steps=800)  # the leaderboard's trap margin
