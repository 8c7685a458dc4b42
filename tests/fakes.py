"""Shared fakes of the tests: a hand-built synthetic run (raw cell records with hand-computable numbers).

The synthetic run. Merge track (llama, adapter, task `add` with the other member `reverse`; base 0.2 on
`add`, 0.1 on `reverse`, the public `reverse` expert 0.9): the release-free control, `none` (re-trained
per seed) and `trap2`; attack `ta` (pinned) valid over its two seeds, `ties` (rescaling) weak because the
none merge loses the other member, and an orphan attack without a none row. A second model (`gpt2`)
whose only attack is weak. Finetune track (task `sort`): the from-scratch control, `none` and `pmp`;
`lora` valid, `full` weak; `pmp` n/a on a third architecture.
"""

from __future__ import annotations

import json

import pandas as pd

from bench.results import RAW_COLUMNS

PROVENANCE = {
    "lockbench_version": "0.1.0", "torch_version": "2.13.0", "transformers_version": "5.23.0",
    "peft_version": "0.21.0", "mergekit_version": "0.1.5", "lm_eval_version": "0.4.13", "zoo_hash": "zoo123",
    "cpu_capability": "aten AVX2",
}
FAMILY = {"ta": "pinned", "ties": "rescaling", "orphan": "pinned", "lora": "finetune", "full": "finetune"}


def _row(**values: object) -> dict:
    row: dict[str, object] = {name: None for name in RAW_COLUMNS}
    row.update(defense_config="{}", model="llama", family="llama", attack_config="{}", status="ok", error="",
               n_members=0, attack_seconds=1.5, defense_seconds=2.5, **PROVENANCE)
    row.update(values)
    row["attack_family"] = FAMILY.get(str(row["attack"]), "pinned")
    return row


def merge_row(defense: str, attack: str, seed: int, utility: float | None, merged: float | None,
              member: float | None = None, loss_half: float = 0.5, **values: object) -> dict:
    by_member = json.dumps({"reverse": member}) if member is not None else ""
    return _row(**{**dict(
        track="merge", defense=defense, release_format="adapter", task="add", members="reverse", n_members=2,
        attack=attack, attack_key=f"k_{attack}", seed=seed, merge_method="task_arithmetic",
        merge_weights="[1.0, 1.0]", merge_normalize=False, merge_lambda=1.0, utility=utility, base_acc=0.2,
        merged_acc=merged, merged_acc_members=member, members_expert_acc=0.9, merged_acc_by_member=by_member,
        base_acc_by_member=json.dumps({"reverse": 0.1}), expert_acc_by_member=json.dumps({"reverse": 0.9}),
        release_loss_s05=loss_half, attack_steps=0, attack_examples=64, **merge_val(merged, member, utility)),
        **values})


def merge_val(merged: float | None, member: float | None, release: float | None) -> dict:
    """attacker_val columns equal to the test numbers (base 0.2 / 0.1, the public `reverse` expert 0.9), so
    the attacker's pick agrees with the test value unless a test gives other val numbers."""
    if merged is None or release is None:
        return {}
    scores = {"add": merged} | ({"reverse": member} if member is not None else {})
    return {"val_acc_by_task": json.dumps(scores), "val_base_by_task": json.dumps({"add": 0.2, "reverse": 0.1}),
            "val_standalone_by_task": json.dumps({"add": release, "reverse": 0.9})}


def finetune_row(defense: str, attack: str, seed: int, utility: float | None, before: float | None,
                 accs: tuple[float, float, float, float] | None, **values: object) -> dict:
    acc = accs or (None, None, None, None)
    gains = [None if a is None or before is None else a - before for a in acc]
    return _row(**{**dict(
        track="finetune", defense=defense, release_format="full", task="sort", members="", attack=attack,
        attack_key=f"k_{attack}", seed=seed, ft_method=attack, ft_lr=1e-3, ft_steps=300, utility=utility,
        base_acc=before, acc_before=before, acc_b0125=acc[0], acc_b025=acc[1], acc_b05=acc[2], acc_after=acc[3],
        gain_b0125=gains[0], gain_b025=gains[1], gain_b05=gains[2], gain_b1=gains[3], attack_steps=300,
        attack_examples=256, val_acc_by_task=json.dumps({"sort": acc[3]}) if acc[3] is not None else None),
        **values})


def raw_frame() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        rows += [merge_row("control", "ta", seed, 0.2, 0.25, 0.8, defense_config='{"control": "release-free"}'),
                 merge_row("control", "ties", seed, 0.2, 0.3, 0.1, defense_config='{"control": "release-free"}'),
                 merge_row("none", "ties", seed, 0.8, 0.7, 0.1)]  # loses the other member: weak
    rows += [
        # none: joint kept vs the experts = min(0.5/0.6, 0.6/0.8) = 0.75 at seed 0, min(0.4/0.6, 0.3/0.8) = 0.375
        # at seed 1: the mean 0.5625 passes, so the configuration is valid at both seeds (decided over seeds)
        merge_row("none", "ta", 0, 0.8, 0.7, 0.7), merge_row("none", "ta", 1, 0.8, 0.6, 0.4),
        merge_row("trap2", "ta", 0, 0.76, 0.45, 0.6, loss_half=0.8),   # trap formed (gap 0.3 > 0.1)
        merge_row("trap2", "ta", 1, 0.72, 0.8, 0.2, loss_half=0.55),   # no trap (gap 0.05)
        merge_row("trap2", "ties", 0, 0.76, 0.2, 0.2, loss_half=0.8),
        merge_row("trap2", "ties", 1, 0.72, 0.2, 0.2, loss_half=0.55),
        merge_row("trap2", "orphan", 1, 0.72, 0.99, 0.8, loss_half=0.55),  # no none row
        merge_row("trap2", "ta", 1, 0.72, None, None, status="failed", error="RuntimeError: boom", task="mul"),
        # a second architecture whose only attack keeps nothing of the other member: invalid
        merge_row("control", "ta", 0, 0.2, 0.25, 0.1, model="gpt2", family="gpt2"),
        merge_row("none", "ta", 0, 0.8, 0.7, 0.1, model="gpt2", family="gpt2"),
        merge_row("trap2", "ta", 0, 0.8, 0.7, 0.1, model="gpt2", family="gpt2"),
    ]
    for seed in (0, 1):
        rows += [
            finetune_row("control", "lora", seed, 0.0, 0.0, (0.0, 0.05, 0.1, 0.2),
                         defense_config='{"control": "from-scratch"}'),
            finetune_row("control", "full", seed, 0.0, 0.0, (0.0, 0.0, 0.0, 0.1),
                         defense_config='{"control": "from-scratch"}'),
            finetune_row("none", "lora", seed, 0.5, 0.1, (0.3, 0.5, 0.7, 0.9)),
            finetune_row("none", "full", seed, 0.5, 0.1, (0.1, 0.2, 0.2, 0.3)),  # gains 0.2 < 0.3: weak
            finetune_row("pmp", "lora", seed, 0.45, 0.05, (0.1, 0.2, 0.5, 0.9)),
            finetune_row("pmp", "full", seed, 0.45, 0.05, (0.1, 0.2, 0.2, 0.9)),
            *(finetune_row("pmp", attack, seed, None, None, None, model="mamba", family="mamba", status="n/a",
                           error="pmp: architecture not supported") for attack in ("lora", "full")),
        ]
    return pd.DataFrame(rows)


def valid_raw_frame() -> pd.DataFrame:
    """The synthetic run without its invalid second architecture: every track × model has a valid attack."""
    raw = raw_frame()
    return raw[raw["model"] != "gpt2"].reset_index(drop=True)


def tiny_model(family: str, vocab_size: int, seed: int = 0, tied: bool = False):
    """A one-layer, hidden-16 Llama- or GPT-2-style causal LM from a seed (GPT-2 keeps its default dropout
    of 0.1, so code under test must not depend on the model's mode)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=1, n_head=2, n_inner=32,
                                          n_positions=64, bos_token_id=1, eos_token_id=2,
                                          tie_word_embeddings=tied)).eval()
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                                        pad_token_id=0)).eval()


def perturbed(model, seed: int, scale: float):
    """A copy of `model` with Gaussian noise of `scale` added to every parameter (a fake expert)."""
    import copy

    import torch

    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return other


#: What `$LOCKBENCH_SCORER` names to select the double below (tests/ must be on the path).
FAKE_SCORER = "fakes:FakeScorer"


class FakeScorer:
    """A scorer double (bench.harness.scoring), as lm-eval's `DummyLM` stands in for a model: a number in
    [0, 1) from a hash of the model's weights and the task, so different models score differently and the
    same model the same, with no lm-eval. Select it with LOCKBENCH_SCORER=FAKE_SCORER."""

    name = "fake"

    def __init__(self, tasks: object):
        self.tasks = tasks

    @staticmethod
    def accuracy(model, task: str) -> float:
        import hashlib

        from bench.toolkit.evaluate import as_plain_model

        total = sum(float(parameter.detach().double().sum()) for parameter in as_plain_model(model).parameters())
        digest = hashlib.sha256(f"{total:.9e}:{task}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def score(self, model, tokenizer, task_names) -> dict[str, float]:
        return {task: self.accuracy(model, task) for task in task_names}

    def score_examples(self, model, tokenizer, task_names):
        """No per-example values: a bootstrap holds the double's accuracies fixed."""
        from bench.toolkit.evaluate import TaskScore

        return {task: TaskScore(self.accuracy(model, task)) for task in task_names}

    def attacker_val(self, tokenizer, task_names=None):
        scorer = self

        class ValScorer:
            calls = 0

            def __call__(self, model, names):
                ValScorer.calls += 1
                return {task: scorer.accuracy(model, f"{task}/attacker_val") for task in names}

        return ValScorer()


#: micro's zoo with one model and one protected task: the smallest preset file a CLI test can run.
MICRO_LLAMA_PRESET = """\
extends: micro
name: micro-llama
description: micro's zoo; llama only, one protected task (plumbing, not a valid benchmark)
grid:
  models: [llama]
  protected_tasks: [sort]
"""


def owner_of(ctx, defense: str, track: str, release_format: str, model: str = "llama"):
    """The owner's view of one job of `ctx`'s zoo; the merge track protects the zoo's first expert task."""
    from bench.harness.grid import DefenseJob
    from bench.harness.stages import owner_view

    task = ctx.preset.zoo.expert_tasks[0] if track == "merge" else None
    return owner_view(ctx, DefenseJob(defense, defense, "{}", track, release_format, model, task, 0))


def gate_job(defense: str, release_format: str):
    """The regression gate's own job (`smoke`, seed 0) for `defense` in `release_format`: a ci-zoo test that
    produces its release through the harness's release cache (`run_defense_job` in the shared ci root) hands
    it to the gate that `make test` runs after pytest, instead of both training it."""
    from bench.harness.grid import expand
    from bench.presets import load_preset

    smoke = load_preset("smoke")
    assert smoke.grid is not None and smoke.zoo == load_preset("ci").zoo, "the gate's zoo must be the ci zoo"
    cells = expand(smoke.grid, {m: smoke.zoo.expert_tasks_of(m) for m in smoke.zoo.models},
                   list(smoke.zoo.downstream_tasks))
    return next(cell.defense for cell in cells if cell.defense.defense == defense
                and cell.defense.release_format == release_format and cell.defense.seed == 0)


def protect_with(name: str, owner, **config):
    """The release of the registered defense `name` with `config`, for `owner`."""
    from bench.plugins import DEFENSES

    cls = DEFENSES.get(name)
    return cls(cls.Config.model_validate(config)).protect(owner)


#: Small configurations of the searching attacks, so that every registered attack runs in seconds.
SMALL_ATTACK_CONFIGS = {
    "adaptive_coefficient": {"coefficients": [0.5, 1.0], "densities": [0.5]},
    "per_member": {"weights": [0.5, 1.0]},
    "merge_heal": {"steps": 3},
    "multitask_heal": {"steps": 3},
    "untrap_merge": {"steps": 3, "methods": ["task_arithmetic"], "coefficients": [1.0]},
    "lora_finetune": {"lr": [1e-3], "steps": [2, 3]},
    "full_finetune": {"lr": [1e-4], "steps": [2, 3]},
    "distill_merge": {"steps": 3, "coefficients": [0.5, 1.0], "densities": [0.5]},
    "align_to_base": {"weights": [1.0]},
    "regmean": {"max_examples": 16},
    "layerwise_merge": {"weights": [0.5, 1.0]},
    "multi_distill": {"steps": 3},
    "mask_finetune": {"lr": [1e-4], "steps": [2, 3]},
}
