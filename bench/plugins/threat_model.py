"""The threat model's types (DESIGN §2): tracks and release formats, what the owner sees when producing a
release (`OwnerView`), what a defense publishes (`Release`), what an attacker may use (`PublicView`) and
what an attack returns (`AttackOutput`). The harness builds the views; plugins only read them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Track = Literal["merge", "finetune"]
ReleaseFormat = Literal["adapter", "full"]
TRACKS: tuple[Track, ...] = ("merge", "finetune")
FORMATS: tuple[ReleaseFormat, ...] = ("adapter", "full")
#: The reference every defense is judged against (the unprotected release), and the label of the harness's
#: release-free / from-scratch control cells: the vocabulary of cells.csv's `defense` column beside the
#: defenses' own names.
REFERENCE_DEFENSE = "none"
CONTROL_DEFENSE = "control"
#: DESIGN §4's attack families: `pinned` keeps the release at scale 1; `rescaling` re-scales it (shared
#: coefficients, normalised or sparsifying merges: what Trap² claims to stop); `aligning` undoes a
#: re-parameterisation against the public base; `data` spends attacker data on the protected task (heal,
#: distillation, RegMean); `finetune` adapts a released base.
AttackFamily = Literal["pinned", "rescaling", "aligning", "data", "finetune"]
ATTACK_FAMILIES: tuple[AttackFamily, ...] = ("pinned", "rescaling", "aligning", "data", "finetune")

@dataclass
class TaskData:
    """Prompts and answers of one split of one task."""

    prompts: list[str]
    answers: list[str]


@dataclass
class OwnerView:
    """What a model owner has when producing a release (DESIGN §2): never the attacker or test split.

    Merge track: `owner_train` / `owner_val` are the protected task's owner split (the last tenth held
    out for checkpoint selection), `replay` the public-mixture sample the zoo's experts replay, and
    `reference_release` the plain expert. Finetune track: `capability_data` / `capability_val` are the
    base's skill mixture exactly as the zoo pre-trained on it. `recipe` is the zoo's training recipe for
    this model (a `bench.zoo.config.ZooConfig`), so a defense can match the reference's budget.

    `seed` is the job's seed, which attacks see too (`PublicView.seed`): fine for training randomness,
    never for a key. `secret` is the owner's secret for this job (63 bits, `bench.harness.owner_secret`),
    which no attack receives: a defense draws keys (permutations, transforms) from it and writes nothing
    of it into the release.
    """

    track: Track
    release_format: ReleaseFormat
    model_name: str
    base: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    seed: int
    secret: int
    task: str | None = None
    owner_train: TaskData | None = None
    owner_val: TaskData | None = None
    replay: TaskData | None = None
    reference_release: PreTrainedModel | PeftModel | None = None
    capability_data: dict[str, TaskData] = field(default_factory=dict)
    capability_val: dict[str, TaskData] = field(default_factory=dict)
    recipe: Any = None

    def unprotected(self) -> PreTrainedModel | PeftModel:
        """What the owner would publish without protection: the plain expert (merge) or the base (finetune)."""
        if self.track == "merge":
            assert self.reference_release is not None
            return self.reference_release
        return self.base


@dataclass
class Release:
    """A defense's output: the public model (full weights or a LoRA adapter) and private material.

    `private` is written to a separate directory that no attack is ever given.
    """

    model: PreTrainedModel | PeftModel
    private: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class PublicView:
    """Everything an attacker may use (DESIGN §2): the release, the public base and experts, and its own
    split. There is deliberately no field for private defense material, the owner's secret or the test
    split, and nothing here holds a path to them (tests/integration/test_harness.py walks every reachable attribute)."""

    track: Track
    release_format: ReleaseFormat
    model_name: str
    release: PreTrainedModel | PeftModel
    base: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: str
    attacker_train: TaskData
    attacker_val: TaskData
    public_experts: dict[str, PreTrainedModel | PeftModel]
    public_experts_val: dict[str, TaskData]
    seed: int
    budget_fractions: list[float] = field(default_factory=lambda: [1.0])
    public_experts_train: dict[str, TaskData] = field(default_factory=dict)
    """The attacker's own training rows of each public expert's task (its attacker_train split: disjoint
    from the owner's data and from test), for attacks that train on the members' skills too."""
    score_val: Callable[[PreTrainedModel | PeftModel, list[str]], dict[str, float]] | None = None
    """lm-eval accuracy on the attacker's validation split (never test), for adaptive attacks' searches: the
    harness passes a `bench.harness.val_scorer.AttackerValScorer` holding only the attacker_val rows of the
    view's tasks (no file path); `score_val(model, task_names) -> {task: accuracy}`, with a `calls` count."""


@dataclass
class AttackOutput:
    """The attacked model(s). Fine-tuning attacks report a checkpoint per budget fraction.

    `stages` are intermediate models the harness also scores on the protected task (merge-then-heal's
    merge before the heal, as `pre_heal`), so a reader sees what each step of the attack contributed.
    """

    models: dict[float, PreTrainedModel]
    knobs: dict[str, Any]
    steps: int = 0
    examples: int = 0
    stages: dict[str, PreTrainedModel] = field(default_factory=dict)


class AttackNotApplicable(RuntimeError):
    """Raised by an attack whose preconditions the cell does not meet (an adapter-space merge of a full
    release, a two-input method given four members): the harness records the cell as `n/a`, not `failed`."""
