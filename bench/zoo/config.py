"""The zoo's configuration: which models exist, how the tiny ones are trained, on which tasks."""

from __future__ import annotations

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from bench.config import StrictModel
from bench.zoo.architectures import ArchitectureConfig
from tasks import SplitSizes
from tasks.documents import DocumentSource, declare_document_tasks


class TrainingConfig(StrictModel):
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    batch_size: int = Field(64, ge=1)
    warmup_steps: int = Field(0, ge=0)
    replay_fraction: float = Field(
        0.0, ge=0, description="extra examples from the base's public mixture, as a fraction of the task data "
        "(experts only): tiny models have no spare capacity, and without replay an expert forgets every other skill")


class LoraConfigModel(StrictModel):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    training: TrainingConfig


class ModelEntry(StrictModel):
    """One architecture of the zoo: a tiny model trained here, or a pretrained one from a hub/path."""

    architecture: ArchitectureConfig | None = None
    pretrained: str | None = None
    expert_paths: dict[str, str] = Field(default_factory=dict)
    trust_remote_code: bool = False
    # Per-architecture overrides of the zoo's recipe: GPT-2-style models (learned absolute positions)
    # learn positional skills several times slower than Llama-style ones at this scale.
    base_training: TrainingConfig | None = None
    base_task_fractions: dict[str, float] | None = None
    expert_training: TrainingConfig | None = None
    lora: LoraConfigModel | None = None
    expert_tasks: list[str] | None = Field(
        None, min_length=2, description="this model's merge-track tasks, when a skill of the zoo's list is out "
        "of its reach (GPT-2-style models at hidden size 64 never learn `last`)")

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        if (self.architecture is None) == (self.pretrained is None):
            raise ValueError("give exactly one of 'architecture' (a tiny model built here) or 'pretrained'")
        return self


class ZooConfig(StrictModel):
    """Everything that determines the zoo's weights; its hash names the zoo on disk."""

    seed: int = 0
    models: dict[str, ModelEntry]
    split_sizes: SplitSizes = Field(default_factory=SplitSizes)
    base_tasks: list[str] = Field(min_length=1, description="skill mixture the generalist base is trained on")
    base_task_fractions: dict[str, float] = Field(
        default_factory=dict,
        description="share of a base task's owner split used in the mixture (default 1.0): a small share gives "
        "the base the partial skill on the experts' tasks that DESIGN §6 asks for")
    base_training: TrainingConfig
    expert_tasks: list[str] = Field(min_length=2, description="merge-track tasks, one expert each")
    expert_training: TrainingConfig
    lora: LoraConfigModel
    downstream_tasks: list[str] = Field(
        default_factory=list, description="finetune-track tasks; the base must never see them"
    )
    document_tasks: dict[str, DocumentSource] = Field(
        default_factory=dict, description="tasks made of documents (a stock lm-eval task's, a task YAML's or JSONL "
        "rows), split as procedural ones are; name them in any task list (tasks.documents)")

    @model_validator(mode="after")
    def _declare_document_tasks(self) -> ZooConfig:
        declare_document_tasks(self.document_tasks)  # by name only: the documents load on first use
        return self

    @model_serializer(mode="wrap")
    def _without_empty_documents(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A zoo without document tasks dumps (and hashes) as it did before they existed."""
        data = handler(self)
        if not self.document_tasks:
            data.pop("document_tasks", None)
        return data

    @model_validator(mode="after")
    def _fractions_name_base_tasks(self) -> ZooConfig:
        for fractions in [self.base_task_fractions] + [m.base_task_fractions or {} for m in self.models.values()]:
            unknown = sorted(set(fractions) - set(self.base_tasks))
            if unknown:
                raise ValueError(f"base_task_fractions names {unknown}, which are not in base_tasks")
            bad = {k: v for k, v in fractions.items() if not 0 < v <= 1}
            if bad:
                raise ValueError(f"base_task_fractions must lie in (0, 1]: {bad}")
        return self

    def recipe(self, model: str) -> ZooConfig:
        """This zoo's recipe with `model`'s overrides applied (what actually trains that model)."""
        entry = self.models[model]
        updates = {key: getattr(entry, key) for key in ("base_training", "base_task_fractions", "expert_training",
                                                         "lora", "expert_tasks") if getattr(entry, key) is not None}
        return self.model_copy(update=updates) if updates else self

    def expert_tasks_of(self, model: str) -> list[str]:
        """`model`'s merge-track tasks: its own list when it overrides the zoo's (as `recipe` applies it)."""
        return list(self.recipe(model).expert_tasks)

    def all_expert_tasks(self) -> list[str]:
        """Every task some model of the zoo has an expert for, in first-seen order."""
        return list(dict.fromkeys(task for model in self.models for task in self.expert_tasks_of(model)))

    @model_validator(mode="after")
    def _downstream_unseen(self) -> ZooConfig:
        seen = set(self.downstream_tasks) & set(self.base_tasks)
        if seen:
            raise ValueError(f"downstream tasks {sorted(seen)} are in base_tasks: the base must not see them")
        return self
