"""The grid section of a preset: which defenses, attacks, models, tasks and seeds a run covers (its
expansion into releases and cells is the harness's: bench.harness.grid)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from bench.config import StrictModel
from bench.plugins import ReleaseFormat
from tasks.lmeval import TaskSource


class PluginSpec(StrictModel):
    """A plugin by registry name with its config (validated against the plugin's own Config)."""

    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    n_members: list[int] | None = Field(None, description=(
        "merge attacks: run only on merges of these sizes (default every size of the grid's n_members), e.g. "
        "the papers' 8-way protocol beside adaptive attacks that run on pairs"))

    @property
    def display(self) -> str:
        return self.label or self.name


class GridConfig(StrictModel):
    defenses: list[PluginSpec] = Field(min_length=1)
    merge_attacks: list[PluginSpec] = Field(default_factory=list)
    finetune_attacks: list[PluginSpec] = Field(default_factory=list)
    models: list[str] | None = Field(None, description="zoo model names; default all")
    merge_models: list[str] | None = Field(None, description="zoo models of the merge track; default `models`")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    release_formats: list[ReleaseFormat] = Field(default_factory=lambda: ["adapter", "full"])
    n_members: list[int] = Field(default_factory=lambda: [2])
    protected_tasks: list[str] | None = Field(None, description="merge track; default all expert tasks")
    downstream_tasks: list[str] | None = Field(None, description="finetune track; default the zoo's")
    budget_fractions: list[float] = Field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    utility_tasks: list[TaskSource] = Field(default_factory=list, description=(
        "scored only, never trained: a stock lm-eval task name, {name, lm_eval_yaml: PATH} or {name, jsonl: PATH}; "
        "lm-eval scores each release and the base on them (bench.harness.utility_tasks)"))

    @property
    def expert_models(self) -> list[str] | None:
        """The zoo models whose experts the grid uses: its merge track's (None: every model; none without
        merge attacks). The zoo trains no others' (bench.zoo.build)."""
        if not self.merge_attacks:
            return []
        return self.merge_models if self.merge_models is not None else self.models

    @field_validator("budget_fractions")
    @classmethod
    def _fractions_of_the_budget(cls, fractions: list[float]) -> list[float]:
        if not fractions or any(not 0 < fraction <= 1 for fraction in fractions) or 1.0 not in fractions:
            raise ValueError(f"budget_fractions must lie in (0, 1] and include 1.0, got {fractions}")
        return fractions

    @model_validator(mode="after")
    def _attack_sizes_in_the_grid(self) -> GridConfig:
        for spec in self.finetune_attacks:
            if spec.n_members is not None:
                raise ValueError(f"finetune attack '{spec.display}' sets n_members, which only merge attacks have")
        for spec in self.merge_attacks:
            stray = sorted(set(spec.n_members or []) - set(self.n_members))
            if stray:
                raise ValueError(f"merge attack '{spec.display}' names n_members {stray}, which the grid's "
                                 f"n_members {self.n_members} does not run")
        return self

    @field_validator("n_members")
    @classmethod
    def _at_least_one_member(cls, counts: list[int]) -> list[int]:
        if any(count < 1 for count in counts):
            raise ValueError(f"n_members counts the merged models including the release: each must be >= 1, got {counts}")
        return counts
