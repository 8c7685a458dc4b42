"""Helpers shared by attacks: folding adapters, merging the public members, scoring on the attacker's
own validation split, and the knobs every merge cell records."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from peft import PeftModel
from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator
from transformers import PreTrainedModel

from bench.config import StrictModel
from bench.plugins import AttackNotApplicable, AttackOutput, PublicView  # noqa: F401 - re-exported
from bench.runtime.device import device_of
from bench.toolkit.evaluate import as_plain_model
from bench.toolkit.finetuning import FinetuneSettings, sweep
from bench.toolkit.merging import Layout, draws_random, layout_for, merge_state_dicts, method_spec, sparsifies
from bench.toolkit.search import OptunaSpace, search
from bench.zoo.training import TrainSettings

if TYPE_CHECKING:
    import torch

    from bench.toolkit.search import OptunaSpace

RELEASE = "release"
#: What an adaptive attacker maximises on its own validation split: the protected task alone, the mean
#: accuracy over it and the merged members' tasks, or Trap²'s selection criterion, the mean *normalised*
#: accuracy (each task's accuracy over that of its own unmerged model: the release for T_p, the public
#: expert for a member, both measured on the same validation split).
Objective = Literal["all", "protected", "normalised"]




def weighted_method(method: str) -> str:
    """A config validator's check: the mergekit method has a per-member `weight` for a search to set."""
    if "weight" not in {parameter.name for parameter in method_spec(method).parameters}:
        raise ValueError(f"mergekit method '{method}' has no per-member 'weight' to search")
    return method


def full_weights(model: PreTrainedModel | PeftModel) -> dict:
    """Full weights of a release or public expert: adapters are folded into a copy of their base."""
    return {name: tensor.detach() for name, tensor in as_plain_model(model).state_dict().items()}


def model_from_state(template: PreTrainedModel, state: dict) -> PreTrainedModel:
    model = type(template)(template.config).to(device_of(template))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"merged state has unexpected tensors: {unexpected[:3]}")
    return model.eval()


def expert_name(task: str) -> str:
    return f"expert:{task}"


class SeedFreeMerge:
    """Mixin of the merge searches scored on attacker_val (per_member, adaptive_coefficient, align_to_base):
    seeded only through a random merge method (DARE, DELLA), so otherwise `Attack.seed_free`."""

    @classmethod
    def seed_free(cls, config: Any) -> bool:
        return not draws_random(config.method)


@dataclass
class MergeInputs:
    """The release and the cell's public experts as full weights, folded once per attack so that a
    search over hundreds of merges does not fold adapters hundreds of times."""

    template: PreTrainedModel
    base: dict
    members: dict[str, dict]  # release first, then the experts in the cell's order
    seed: int

    @classmethod
    def from_view(cls, view: PublicView) -> MergeInputs:
        members = {RELEASE: full_weights(view.release)}
        members.update({expert_name(task): full_weights(model) for task, model in view.public_experts.items()})
        return cls(view.base, {k: v.detach() for k, v in view.base.state_dict().items()}, members, view.seed)

    def layout(self, method: str) -> Layout:
        layout = layout_for(method, len(self.members))
        if layout is None:
            raise AttackNotApplicable(f"mergekit method '{method}' cannot merge {len(self.members)} models "
                                      "(its input contract rejects that count)")
        return layout

    def merge(self, method: str, parameters: dict[str, Any], layout: Layout | None = None) -> PreTrainedModel:
        merged = merge_state_dicts(self.base, self.members, method, parameters, seed=self.seed,
                                   layout=layout or self.layout(method))
        return model_from_state(self.template, merged)


def merge_release(view: PublicView, method: str, parameters: dict, release_weight: float | None = None,
                  uses_base: bool = True) -> PreTrainedModel:
    """Merge the release with the public experts through mergekit (in memory).

    `parameters` are mergekit's; a scalar `weight` applies to every member unless `release_weight`
    pins the release's own weight (the per-member attacker of DESIGN §4).
    """
    inputs = MergeInputs.from_view(view)
    params = dict(parameters)
    if release_weight is not None:
        params["weight"] = member_weights(inputs.members, release_weight, params.get("weight", 1.0))
    return inputs.merge(method, params, "base" if uses_base else "members")


def member_weights(members: Sequence[str], release: float, others: float | dict[str, float]) -> dict[str, float]:
    """Per-member weights keyed by member name: the release's and the others' (one value or per name)."""
    return {name: release if name == RELEASE else (others[name] if isinstance(others, dict) else others)
            for name in members}


def objective_tasks(view: PublicView, objective: Objective) -> list[str]:
    """What an adaptive attacker maximises on its own split: the protected task alone, or it together
    with every merged member's task (the merge track's goal, DESIGN §1)."""
    return [view.task] if objective == "protected" else [view.task, *view.public_experts]


def normalised_mean(scores: dict[str, float], references: dict[str, float]) -> float:
    """Mean over tasks of score / reference; a task whose own model scores 0 counts its raw score (there is
    no gain to normalise by)."""
    return sum(scores[t] / references[t] if references[t] > 0 else scores[t] for t in scores) / len(scores)


def objective_examples(view: PublicView, objective: Objective) -> int:
    """How many of its own validation examples the adaptive attacker consults (its data budget)."""
    return sum(len(view.attacker_val.prompts) if task == view.task else len(view.public_experts_val[task].prompts)
               for task in objective_tasks(view, objective))


def validation_scorer(view: PublicView, objective: Objective) -> Callable[[PreTrainedModel], float]:
    """Mean lm-eval accuracy on the attacker_val split of the objective's tasks (never test)."""
    if view.score_val is None:
        raise RuntimeError("this adaptive attack needs view.score_val (the attacker-val scorer)")
    score_val, tasks = view.score_val, objective_tasks(view, objective)
    references: dict[str, float] = {}
    if objective == "normalised":
        references[view.task] = score_val(view.release, [view.task])[view.task]
        for task, expert in view.public_experts.items():
            references[task] = score_val(expert, [task])[task]

    def evaluate(model: PreTrainedModel) -> float:
        scores = score_val(model, tasks)
        if objective == "normalised":
            return normalised_mean({task: scores[task] for task in tasks}, references)
        return sum(scores[task] for task in tasks) / len(tasks)

    return evaluate


def merge_knobs(method: str, parameters: dict[str, Any], layout: Layout, seed: int, **extra: Any) -> dict[str, Any]:
    """The knobs of DESIGN §4 (method, weights, normalize, lambda, density, rescale, seed) and the rest.

    Density and rescale are recorded only for methods that sparsify (elsewhere they change nothing).
    """
    # local: mergekit builds its method registry on import; only merging needs it
    from mergekit import merge_methods
    from mergekit.merge_methods.base import MISSING

    registered = merge_methods.get(method)
    sparse = sparsifies(method)
    defaults = {p.name: p.default for p in registered.spec.parameters if p.default is not MISSING}
    parameters = {**defaults, **parameters}  # what mergekit actually used, defaults included
    normalize = parameters.get("normalize", parameters.get("normalize_weights"))
    return {
        "method": method,
        "weights": parameters.get("weight"),
        "normalize": normalize,
        "lambda": parameters.get("lambda"),
        "density": parameters.get("density") if sparse else None,
        "rescale": parameters.get("rescale") if sparse else None,
        "seed": seed,
        "layout": layout,
        "parameters": dict(parameters),
        **extra,
    }


class SweepConfig(StrictModel):
    """A sweep; a single number for `lr` or `steps` is a sweep of one.

    `search: optuna` replaces the lr × steps grid by a fixed budget of Optuna trials over `lr_range`
    (log-uniform), `steps_choices` and `warmup_choices` (bench.toolkit.search). A setting of the other
    search is an error naming the key, and is left out of the dump, so a grid config keeps the canonical
    JSON (and the cell key) it had before Optuna existed.
    """

    #: Settings that only one of the two searches reads (subclasses add their own).
    GRID_ONLY: ClassVar[frozenset[str]] = frozenset({"lr", "steps", "independent_runs"})
    OPTUNA_ONLY: ClassVar[frozenset[str]] = frozenset({"search", "trials", "lr_range", "steps_choices",
                                                       "warmup_choices"})

    search: Literal["grid", "optuna"] = Field("grid", description="the fixed grid, or an Optuna TPE search")
    lr: list[float] = Field(min_length=1, description="learning rates tried")
    steps: list[int] = Field(min_length=1, description="step budgets tried")
    batch_size: int = Field(32, ge=1)
    independent_runs: bool = Field(False, description="a run per (lr, steps); else one run per lr of the "
                                   "largest budget, stopped early at each smaller one (about half the cost)")
    trials: int = Field(8, ge=1, description="optuna: the fixed trial budget")
    lr_range: tuple[float, float] = Field((1e-4, 1e-2), description="optuna: lr drawn log-uniform in [lo, hi]")
    steps_choices: list[int] = Field(default_factory=lambda: [150, 300], min_length=1,
                                     description="optuna: step budgets to choose from")
    warmup_choices: list[int] = Field(default_factory=lambda: [0, 20], min_length=1,
                                      description="optuna: linear warm-up steps to choose from")

    @field_validator("lr", "steps", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("lr", "steps", "steps_choices")
    @classmethod
    def _positive(cls, values: list) -> list:
        if any(value <= 0 for value in values):
            raise ValueError("must be positive")
        return values

    @field_validator("lr_range")
    @classmethod
    def _ordered_range(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        if not 0 < bounds[0] < bounds[1]:
            raise ValueError(f"lr_range needs 0 < lo < hi, got {list(bounds)}")
        return bounds

    @model_validator(mode="after")
    def _one_search(self) -> SweepConfig:
        """Reject settings the chosen search would silently ignore, and warm-ups as long as a budget."""
        ignored = sorted((self.OPTUNA_ONLY - {"search"} if self.search == "grid" else self.GRID_ONLY)
                         & self.model_fields_set)
        if ignored:
            raise ValueError(f"{', '.join(ignored)}: not read by search '{self.search}'")
        if self.search == "optuna" and not 0 <= min(self.warmup_choices) <= max(self.warmup_choices) < min(
                self.steps_choices):
            raise ValueError("warmup_choices: each must be ≥ 0 and shorter than every steps_choices budget")
        return self

    @model_serializer(mode="wrap")
    def _applicable_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump only what the chosen search reads (which also round-trips through `_one_search`)."""
        unread = self.OPTUNA_ONLY if self.search == "grid" else self.GRID_ONLY
        return {key: value for key, value in handler(self).items() if key not in unread}

    def optuna_space(self) -> OptunaSpace:
        """The study's search space (bench.toolkit.search); the LoRA config adds its ranks."""

        return OptunaSpace(self.trials, self.lr_range, tuple(self.steps_choices), tuple(self.warmup_choices))


def run_sweep(view: PublicView, config: SweepConfig, method: str, r: int = 8, alpha: int = 16,
              update_mask: Mapping[str, torch.Tensor] | None = None) -> AttackOutput:
    """Shared by the fine-tuning attacks: sweep (or search), choose on attacker_val, report. `update_mask`
    (grid search, full fine-tuning) trains only those entries (bench.toolkit.finetuning.FinetuneSettings)."""
    if view.score_val is None:
        raise RuntimeError("fine-tuning sweeps choose on view.score_val (the attacker-val scorer)")
    score_val, task = view.score_val, view.task

    def evaluate(model: PreTrainedModel) -> float:
        return score_val(model, [task])[task]

    if config.search == "optuna":
        if update_mask is not None:
            raise ValueError("update_mask: the Optuna search trains every entry; use the grid")
        return _run_optuna(view, config, method, alpha, evaluate)
    settings = FinetuneSettings(method, TrainSettings(steps=0, lr=0.0, batch_size=config.batch_size, seed=view.seed),
                                lora_r=r, lora_alpha=alpha, update_mask=update_mask)
    result = sweep(view.release, view.tokenizer, view.attacker_train.prompts, view.attacker_train.answers,
                   settings, config.lr, config.steps, evaluate, view.budget_fractions, config.independent_runs)
    knobs = {"method": method, "lr": result.lr, "steps": result.steps, "batch_size": config.batch_size,
             "val_score": result.val_score, "sweep_steps": result.trained_steps,
             "independent_runs": config.independent_runs, "trials": result.trials,
             "val_examples": len(view.attacker_val.prompts)}
    if method == "lora":
        knobs["r"] = r
    return AttackOutput(models=result.checkpoints, knobs=knobs, steps=result.steps,
                        examples=len(view.attacker_train.prompts))


def _run_optuna(view: PublicView, config: SweepConfig, method: str, alpha: int,
                evaluate: Callable[[PreTrainedModel], float]) -> AttackOutput:
    """`run_sweep` with an Optuna study in place of the grid; optuna is imported only when a cell uses it."""

    space = config.optuna_space()
    found = search(view.release, view.tokenizer, view.attacker_train.prompts, view.attacker_train.answers,
                   method, space, view.seed, evaluate, view.budget_fractions, config.batch_size, alpha)
    knobs = {"method": method, "search": "optuna", "lr": found.lr, "steps": found.steps,
             "warmup_steps": found.warmup_steps, "batch_size": config.batch_size, "val_score": found.val_score,
             "sweep_steps": found.trained_steps, "trials": found.trials, "n_trials": space.trials,
             "lr_range": list(space.lr_range), "val_examples": len(view.attacker_val.prompts)}
    if method == "lora":
        knobs.update(r=found.r, alpha=alpha)
    return AttackOutput(models=found.checkpoints, knobs=knobs, steps=found.steps,
                        examples=len(view.attacker_train.prompts))
