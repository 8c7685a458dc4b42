"""DESIGN §6 for the attack suite on the `ci` zoo: each attack of the `default` preset, run against `none`,
is valid on at least one input form.

Split from tests/integration/test_attacks.py (whose tests run on the micro zoo and tiny models) so that pytest-xdist's
`--dist loadfile` can run this one long test (minutes of real training and lm-eval scoring) on one worker
while the other works through the micro-zoo tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.presets import load_preset
from bench.presets.grid import PluginSpec

#: `regmean` (issue 29: in every grid where `none`'s pick is not void) keeps 0.31 / 0.33 (adapter) and 0.40 /
#: 0.30 (full) of the gains jointly on length / upper, measured on the pinned path: it keeps too little of
#: each member. A diagnostic, not a reason to leave it out: the attacker may still pick it per input. A
#: finding, not a tuning target: the test fails if another attack or input form turns weak.
KNOWN_WEAK_ON_THE_CI_ZOO = {("regmean", "adapter"), ("regmean", "full")}


@pytest.mark.slow
def test_default_attacks_meet_the_validity_rule_on_the_ci_zoo(tmp_path_factory: pytest.TempPathFactory,
                                                              ci_root: Path) -> None:
    """DESIGN §6 per attack: each attack of the `default` preset, run against `none` on the ci zoo
    (Llama-style, seed 0, the preset's own tasks and member counts), is valid on at least one input (and on every input
    form but the measured `KNOWN_WEAK_ON_THE_CI_ZOO`): the merge keeps half
    of both experts' gains jointly and beats its release-free control by 0.3, or the fine-tuning gains 0.3
    and beats its from-scratch control by 0.3. When the zoo itself breaks the rule (an expert gaining < 0.3
    or a downstream task the base already solves), no attack can be judged on it: the test then xfails
    with the measured numbers."""
    from bench.commands.validate import check_attacks
    from bench.report.leaderboard import CELLS_FILE
    from bench.results import read_csv

    ci, default = load_preset("ci"), load_preset("default")
    assert default.grid is not None
    # the default's own inputs (its protected and downstream tasks), at one seed against `none`, on the
    # whole ci zoo restricted to Llama-style by the grid: the zoo's hash, and so the cells' keys, are the
    # regression gate's (`make test` runs `smoke` on the same root), which then reuses these `none` cells
    grid = default.grid.model_copy(update={"defenses": [PluginSpec(name="none")], "seeds": [0], "models": ["llama"]})
    run_dir = tmp_path_factory.mktemp("ci-attacks")
    checks, problems, _ = check_attacks(ci.model_copy(update={"grid": grid}), ci_root, run_dir)
    cells = read_csv(run_dir / CELLS_FILE, "cells")
    # the experts are `none`'s releases; the release-free control's "release" is the base itself (gain 0)
    ok = cells[(cells["status"] == "ok") & (cells["defense"] == "none")]
    merge, finetune = ok[ok["track"] == "merge"], ok[ok["track"] == "finetune"]
    assert not merge.empty and not finetune.empty
    expert_gain = (merge["utility"] - merge["base_acc"]).groupby([merge["release_format"], merge["task"]]).min()
    rule = ci.validity
    broken = [f"{form} expert {task} gains {gain:.2f}" for (form, task), gain in expert_gain.items()
              if gain < rule.min_expert_gain]
    broken += [f"base scores {before:.2f} on {task}" for task, before in
               zip(finetune["task"], finetune["acc_before"], strict=True) if before > rule.max_downstream_base]
    if broken:
        pytest.xfail("the ci zoo itself breaks DESIGN §6: " + "; ".join(sorted(set(broken))))
    assert {check.attack for check in checks} == {spec.name for spec in default.grid.merge_attacks
                                                  + default.grid.finetune_attacks}
    failing = {(c.attack, c.release_format): f"{c.status} {c.score:.2f} {c.reasons}" for c in checks if not c.passes}
    assert set(failing) <= KNOWN_WEAK_ON_THE_CI_ZOO and not problems, (failing, problems)
    valid_somewhere = {c.attack for c in checks if c.status == "pass"}
    assert valid_somewhere == {c.attack for c in checks} - {"regmean"}, valid_somewhere
    # the threat multitask_heal models: healing on every member's data keeps the members that a heal on T_p
    # alone wipes (measured on the pinned path: 0.95-1.00 of each member's gain kept against 0.33-0.94)
    members_kept = merge.groupby("attack")["kept_members"].mean()
    assert members_kept["multitask_heal"] > members_kept["merge_heal"], members_kept.to_dict()
