"""DESIGN §2 at its two seams: the scorer attacks are handed, and the secret re-parameterisation keys come from.

The end-to-end walk of everything an attack receives is tests/integration/test_harness.py's
`test_attacks_cannot_reach_private_material`; these tests pin the pieces on the micro zoo.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.harness.grid import DefenseJob


def _val_tasks(ctx) -> list[str]:
    from bench.harness.val_scorer import read_attacker_val

    return list(read_attacker_val(ctx.tasks)[0])


def _record_loglikelihoods(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple, tuple]]:
    """Every (request arguments, lm-eval result) the scoring LM answers, in order."""
    from bench.toolkit.evaluate import quiet_hflm_class

    cls = quiet_hflm_class()
    original = cls.loglikelihood
    seen: list[tuple[tuple, tuple]] = []

    def recording(self, requests, disable_tqdm: bool = False):
        results = original(self, requests, disable_tqdm)
        seen.extend((tuple(r.args), tuple(result)) for r, result in zip(requests, results, strict=True))
        return results

    monkeypatch.setattr(cls, "loglikelihood", recording)
    return seen


# ----------------------------------------------------------------------------- the attacker-val scorer


@pytest.mark.parametrize("release_format", ["full", "adapter"])
def test_attacker_val_scorer_scores_exactly_as_lm_eval_over_the_jsonl(micro_ctx, monkeypatch, release_format) -> None:
    """Same accuracies as `score(..., split="attacker_val")` for every task, from the same lm-eval requests
    answered with the same log-likelihoods (micro's models score near 0, so the requests are what pins it)."""
    from bench.toolkit.evaluate import score

    ctx, tokenizer = micro_ctx, micro_ctx.zoo.tokenizer("llama")
    model = (ctx.zoo.load_expert("llama", "sort") if release_format == "full"
             else ctx.zoo.load_lora_expert("llama", "sort"))
    tasks = _val_tasks(ctx)
    assert len(tasks) >= 3, tasks
    seen = _record_loglikelihoods(monkeypatch)
    expected = score(model, tokenizer, tasks, ctx.tasks, split="attacker_val")
    through_jsonl = sorted(seen)
    seen.clear()
    scorer = ctx.scorer.attacker_val(tokenizer, tasks)
    assert scorer(model, tasks) == expected
    assert sorted(seen) == through_jsonl and len(through_jsonl) == sum(
        len(scorer._rows[task][0]) for task in tasks)
    assert scorer.calls == 1
    assert scorer(model, tasks[:1]) == {tasks[0]: expected[tasks[0]]} and scorer.calls == 2


def test_attacker_val_scorer_holds_only_attacker_val_rows(micro_ctx) -> None:
    """Walked like an attack would walk it: no path, no storage root, no MaterializedTasks, no row of any
    other split; and it refuses a task it was not built with (it has nothing else to score)."""
    from snooper import Snooper

    from tasks.lmeval import MaterializedTasks

    ctx = micro_ctx
    tokenizer = ctx.zoo.tokenizer("llama")
    scorer = ctx.scorer.attacker_val(tokenizer, ["sort", "max"])
    strings: list[str] = []
    objects: list[Any] = []

    class Walker(Snooper):
        def check_string(self, value: str, where: str) -> None:
            strings.append(value)
            super().check_string(value, where)

        def _children(self, value: Any, where: str) -> list[tuple[Any, str]]:
            objects.append(value)
            return super()._children(value, where)

    scorer(ctx.zoo.load_base("llama"), ["sort", "max"])  # so that its cached in-memory datasets are walked too
    walker = Walker(root=ctx.root)
    walker.visit(scorer, "scorer")
    walker.visit(scorer.task_config("sort"), "config")  # what it hands lm-eval, custom_dataset closure included
    assert walker.findings == [], walker.findings
    assert not any(isinstance(o, os.PathLike | MaterializedTasks) for o in objects)
    # The only path it holds is the public tokenizer's own (the view hands attacks that tokenizer anyway).
    assert scorer._tokenizer is tokenizer
    zoo = (Path(ctx.root).resolve() / "zoo").as_posix()
    roots = (str(ctx.root), str(Path(ctx.root).resolve()), str(ctx.tasks.include_path))
    assert not [s for s in strings if any(root in s for root in roots) and not s.startswith(zoo)]
    assert not [s for s in strings if os.path.isabs(s) and os.path.exists(s) and s.endswith(".jsonl")]
    own = {text for task in ("sort", "max") for split in ("attacker_val",)
           for data in [ctx.split(task, split)] for text in data.prompts}
    others = {text for task in ("sort", "max") for split in ("test", "owner_train", "attacker_train")
              for text in ctx.split(task, split).prompts}
    reached = set(strings)
    assert own <= reached and not (others - own) & reached
    with pytest.raises(KeyError, match="no task 'upper'"):
        scorer(ctx.zoo.load_base("llama"), ["upper"])
    assert scorer.calls == 1


# ----------------------------------------------------------------------------- the owner's secret


def test_the_owner_secret_is_reproducible_from_the_config_and_differs_per_job() -> None:
    from bench.harness.owner_secret import owner_secret

    assert owner_secret(0, "job-a") == owner_secret(0, "job-a") != owner_secret(0, "job-b")
    assert owner_secret(0, "job-a") != owner_secret(1, "job-a"), "another preset seed, another secret"
    assert 0 <= owner_secret(0, "job-a") < 2**63


def _job(defense: str, seed: int = 0, config: str = "{}") -> DefenseJob:
    return DefenseJob(defense, defense, config, "merge", "full", "llama", "sort", seed)


@pytest.mark.parametrize("name", ["params", "merge_lock"])
def test_reparameterisation_keys_come_from_the_owner_secret(micro_ctx, name: str) -> None:
    """The key is a function of the owner's secret (+ key_seed), not of the job seed an attack sees; the
    release records nothing of the secret."""
    from bench.harness.owner_secret import owner_secret
    from bench.harness.stages import owner_view
    from bench.plugins import DEFENSES

    cls = DEFENSES.get(name)
    owner = owner_view(micro_ctx, _job(name))
    assert owner.secret == owner_secret(micro_ctx.preset.zoo.seed, _job(name).key)

    def key(secret: int, key_seed: int = 0) -> dict[str, torch.Tensor]:
        owner.secret = secret
        return cls(cls.Config(key_seed=key_seed)).protect(owner).private

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    secret = owner_secret(micro_ctx.preset.zoo.seed, _job(name).key)
    assert same(key(secret), key(secret))
    assert not same(key(secret), key(secret + 1)), "the same job seed, another secret: another key"
    assert same(key(secret, key_seed=5), key(secret + 5)), "key_seed is added to the secret"
    assert not same(key(secret), key(0)), "not the old key (job seed 0 × a constant + key_seed 0)"

    owner.secret = secret
    release = cls(cls.Config()).protect(owner)
    notes = json.dumps(release.notes, default=str)
    assert str(secret) not in notes
    assert not any(str(secret) in str(value) for value in vars(release.model.config).values())


def test_public_view_has_no_secret() -> None:
    """Nothing of the secret in the attacker's view type; the owner's carries it."""
    import dataclasses

    from bench.plugins import OwnerView, PublicView

    assert "secret" in {f.name for f in dataclasses.fields(OwnerView)}
    assert not {f.name for f in dataclasses.fields(PublicView)} & {"secret", "private", "owner_train", "test"}
