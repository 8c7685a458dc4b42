"""`lockbench validate`: is the zoo one on which attacks work against unprotected models?

DESIGN §6's rule: each expert beats the base on its task by `min_expert_gain`; each default merge
(task arithmetic of a pair at coefficient 1.0, through mergekit) keeps at least `min_kept_fraction` of
each member's gain; the base scores at most `max_downstream_base` on each downstream task; each default
fine-tuning attack gains at least `min_finetune_gain` there. A zoo that breaks the rule would make every
normalised attack-success number noise, so validation fails loudly instead.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import PreTrainedModel

from bench.evaluate import as_plain_model, score
from bench.finetuning import finetune
from bench.merging import merge_state_dicts
from bench.presets import Preset
from bench.zoo.build import Zoo
from tasks import build_splits
from tasks.lmeval import MaterializedTasks


@dataclass
class MergeCheck:
    form: str
    members: tuple[str, str]
    coefficient: float
    chosen_on: str
    accuracy: dict[str, float]
    kept_fraction: dict[str, float]
    passes: bool


@dataclass
class FinetuneCheck:
    attack: str
    task: str
    before: float
    after: float
    passes: bool

    @property
    def gain(self) -> float:
        return self.after - self.before


@dataclass
class ArchitectureReport:
    model: str
    base: dict[str, float]
    experts: dict[str, dict[str, float]]
    merges: list[MergeCheck] = field(default_factory=list)
    merge_attacks: dict[str, float] = field(default_factory=dict)
    finetunes: list[FinetuneCheck] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        for row, check in zip(data["finetunes"], self.finetunes, strict=True):
            row["gain"] = check.gain
        return data


def _merged_model(template: PreTrainedModel, base_state: dict, members: dict[str, dict], coefficient: float):
    merged = merge_state_dicts(base_state, members, "task_arithmetic",
                               parameters={"weight": coefficient, "normalize": False, "lambda": 1.0})
    model = type(template)(template.config)
    model.load_state_dict(merged, strict=False)
    return model.eval()


def _kept(merged: float, expert: float, base: float) -> float:
    gain = expert - base
    return (merged - base) / gain if gain > 0 else 0.0


def _check_merges(zoo: Zoo, preset: Preset, name: str, tasks: MaterializedTasks, report: ArchitectureReport,
                  form: str, expert_states: dict[str, dict]) -> None:
    rule = preset.validity
    tokenizer = zoo.tokenizer(name)
    base_model = zoo.load_base(name)
    base_state = base_model.state_dict()
    experts = report.experts[form]
    for first, second in itertools.combinations(preset.zoo.expert_tasks, 2):
        members = {first: expert_states[first], second: expert_states[second]}
        pair = [first, second]
        candidates = [(1.0, "fixed")]
        best, best_val = 1.0, -1.0
        for coefficient in rule.merge_coefficients:
            merged = _merged_model(base_model, base_state, members, coefficient)
            val = score(merged, tokenizer, pair, tasks, split="attacker_val")
            if sum(val.values()) > best_val:
                best, best_val = coefficient, sum(val.values())
        candidates.append((best, "attacker_val"))
        for coefficient, chosen_on in candidates:
            accuracy = score(_merged_model(base_model, base_state, members, coefficient), tokenizer, pair, tasks)
            kept = {task: _kept(accuracy[task], experts[task], report.base[task]) for task in pair}
            passes = all(value >= rule.min_kept_fraction for value in kept.values())
            report.merges.append(MergeCheck(form, (first, second), coefficient, chosen_on, accuracy, kept, passes))
    for chosen_on in ("fixed", "attacker_val"):
        checks = [c for c in report.merges if c.form == form and c.chosen_on == chosen_on]
        kept_values = [value for check in checks for value in check.kept_fraction.values()]
        label = f"{form}/task_arithmetic@" + ("1.0" if chosen_on == "fixed" else "coefficient chosen on attacker_val")
        report.merge_attacks[label] = sum(kept_values) / len(kept_values)
    configs = {k: v for k, v in report.merge_attacks.items() if k.startswith(f"{form}/")}
    if all(value < rule.min_kept_fraction for value in configs.values()):
        report.failures.append(
            f"{name}: no default merge attack on {form} experts keeps {rule.min_kept_fraction} of the experts' "
            "gain on the protected task (mean over ordered pairs: "
            + ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in configs.items()) + ")"
        )


def validate_architecture(zoo: Zoo, preset: Preset, name: str, tasks: MaterializedTasks) -> ArchitectureReport:
    rule = preset.validity
    config = preset.zoo
    tokenizer = zoo.tokenizer(name)
    base_model = zoo.load_base(name)
    all_tasks = list(config.expert_tasks) + list(config.downstream_tasks)
    report = ArchitectureReport(model=name, base=score(base_model, tokenizer, all_tasks, tasks), experts={})
    states: dict[str, dict[str, dict]] = {"full": {}, "lora": {}}
    for form in ("full", "lora"):
        report.experts[form] = {}
        for task in config.expert_tasks:
            if form == "full":
                expert = zoo.load_expert(name, task)
            else:
                expert = as_plain_model(zoo.load_lora_expert(name, task))
            states[form][task] = expert.state_dict()
            accuracy = score(expert, tokenizer, [task], tasks)[task]
            report.experts[form][task] = accuracy
            if accuracy - report.base[task] < rule.min_expert_gain:
                report.failures.append(
                    f"{name}: {form} expert for {task} scores {accuracy:.3f} vs base {report.base[task]:.3f} "
                    f"(gain < {rule.min_expert_gain})"
                )
    for form in ("full", "lora"):
        _check_merges(zoo, preset, name, tasks, report, form, states[form])
    for task in config.downstream_tasks:
        before = report.base[task]
        if before > rule.max_downstream_base:
            report.failures.append(f"{name}: base already scores {before:.3f} on downstream task {task} "
                                   f"(> {rule.max_downstream_base})")
        attacker = build_splits(task, config.seed, config.split_sizes)["attacker_train"]
        for attack_name, recipe in rule.finetune_attacks.items():
            tuned = finetune(base_model, tokenizer, attacker["prompt"], attacker["answer"], recipe, seed=config.seed)
            after = score(tuned, tokenizer, [task], tasks)[task]
            passes = after - before >= rule.min_finetune_gain
            report.finetunes.append(FinetuneCheck(attack_name, task, before, after, passes))
            if not passes:
                report.failures.append(f"{name}: {attack_name} on {task} gains {after - before:.3f} "
                                       f"(< {rule.min_finetune_gain})")
    return report


def validate_zoo(zoo: Zoo, preset: Preset, tasks: MaterializedTasks) -> list[ArchitectureReport]:
    return [validate_architecture(zoo, preset, name, tasks) for name in zoo.model_names]


def write_report(reports: list[ArchitectureReport], path: Path) -> None:
    from bench.storage import write_json_atomic

    write_json_atomic(path, [report.to_json() for report in reports])
