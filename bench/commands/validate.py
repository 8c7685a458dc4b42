"""`lockbench validate`: is the zoo one on which attacks work against unprotected models?

DESIGN §6's rule: each expert beats the base on its task by `min_expert_gain`; task arithmetic of each
pair (through mergekit) keeps at least `min_kept_fraction` of each member's gain — a failure for a preset
without grid merge attacks, a note for one with them, whose attacks `check_attacks` judges one by one; the
base scores at most `max_downstream_base` on each downstream task; each of the rule's fine-tuning recipes
gains at least `min_finetune_gain` there — for a preset without grid fine-tuning attacks: with them,
`check_attacks` judges those instead. Only the models of the grid's merge track have experts (bench.zoo.build)
to check. A zoo that breaks the rule would make every normalised attack-success number noise, so
validation fails loudly instead.

`check_attacks` applies the same rule to every attack of a preset's grid: it runs the grid against
`none` only, through the harness (so the cells are cached and reused by the benchmark run), and says per
attack configuration whether it keeps enough of the expert's gain (merge) or gains enough (finetune).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from bench.harness.context import trim_lm_eval_overheads
from bench.presets import Preset
from bench.presets.grid import PluginSpec
from bench.report.leaderboard import run_and_write
from bench.results import REFERENCE_DEFENSE, VALIDITY_KEY, family_gaps
from bench.results.normalise import joint_kept_vs_experts
from bench.runtime.device import device_of
from bench.runtime.threads import compute_threads
from bench.toolkit.evaluate import as_plain_model, score
from bench.toolkit.finetuning import finetune
from bench.toolkit.merging import merge_state_dicts
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
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        for row, check in zip(data["finetunes"], self.finetunes, strict=True):
            row["gain"] = check.gain
        return data

    @classmethod
    def from_json(cls, data: dict) -> ArchitectureReport:
        merges = [MergeCheck(**{**row, "members": tuple(row["members"])}) for row in data["merges"]]
        finetunes = [FinetuneCheck(**{k: v for k, v in row.items() if k != "gain"}) for row in data["finetunes"]]
        return cls(**{**data, "merges": merges, "finetunes": finetunes})


def _merged_model(template: PreTrainedModel, base_state: dict, members: dict[str, dict], coefficient: float):
    merged = merge_state_dicts(base_state, members, "task_arithmetic",
                               parameters={"weight": coefficient, "normalize": False, "lambda": 1.0})
    model = type(template)(template.config).to(device_of(template))
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
    for first, second in itertools.combinations(preset.zoo.expert_tasks_of(name), 2):
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
        message = (f"{name}: task arithmetic on {form} experts keeps less than {rule.min_kept_fraction} of the "
                   "experts' gain on the protected task (mean over ordered pairs: "
                   + ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in configs.items()) + ")")
        # DESIGN §6 applies the rule per attack of the grid: with a grid, its merge attacks are run against
        # `none` and checked one by one, and plain task arithmetic is only the zoo's first indicator.
        if grid_judges_merges(preset):
            report.notes.append(message + "; the grid's merge attacks are checked one by one")
        else:
            report.failures.append(message)


def check_scores(zoo: Zoo, preset: Preset, name: str, tasks: MaterializedTasks) -> ArchitectureReport:
    """The scoring part of one architecture's check: the base, each expert, the merges of expert pairs."""
    rule = preset.validity
    config = preset.zoo
    tokenizer = zoo.tokenizer(name)
    base_model = zoo.load_base(name)
    expert_tasks = config.expert_tasks_of(name)
    all_tasks = expert_tasks + list(config.downstream_tasks)
    # The experts serve the merge track only: where the grid runs none for this model (`merge_models`), the
    # zoo trains none (bench.zoo.build), so there is nothing to check.
    on_merge_track = name in zoo.expert_models
    report = ArchitectureReport(model=name, base=score(base_model, tokenizer, all_tasks, tasks), experts={})
    states: dict[str, dict[str, dict]] = {"full": {}, "lora": {}}
    for form in ("full", "lora"):
        report.experts[form] = {}
        for task in expert_tasks if on_merge_track else ():
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
    for form in ("full", "lora") if on_merge_track else ():
        _check_merges(zoo, preset, name, tasks, report, form, states[form])
    return report


def check_finetune(zoo: Zoo, preset: Preset, name: str, tasks: MaterializedTasks, task: str, attack: str) -> float:
    """One fine-tuning check: the test accuracy on downstream `task` of the base tuned by the rule's `attack`."""
    config = preset.zoo
    tokenizer = zoo.tokenizer(name)
    attacker = build_splits(task, config.seed, config.split_sizes)["attacker_train"]
    recipe = preset.validity.finetune_attacks[attack]
    tuned = finetune(zoo.load_base(name), tokenizer, attacker["prompt"], attacker["answer"], recipe, seed=config.seed)
    return score(tuned, tokenizer, [task], tasks)[task]


#: One independent part of the zoo check: (model, None, None) scores it, (model, task, attack) fine-tunes it.
ZooPart = tuple[str, str | None, str | None]


def grid_judges_merges(preset: Preset) -> bool:
    """Whether validation runs the grid's merge attacks against `none` (then task arithmetic is only a note)."""
    return preset.grid is not None and bool(preset.grid.merge_attacks)


def grid_judges_finetunes(preset: Preset) -> bool:
    """Whether validation runs the grid's fine-tuning attacks against `none`: DESIGN §6 applies the rule to
    each of them, so the zoo's own fine-tuning check (the rule's recipes on the base) would only repeat it."""
    return preset.grid is not None and bool(preset.grid.finetune_attacks)


def zoo_parts(preset: Preset, names: list[str]) -> list[ZooPart]:
    """The zoo check split into parts that run in any order and on any worker (bench.commands.validate_cli)."""
    attacks = [] if grid_judges_finetunes(preset) else list(preset.validity.finetune_attacks)
    return [part for name in names for part in [(name, None, None)] + [
        (name, task, attack) for task in preset.zoo.downstream_tasks for attack in attacks]]


def check_part(zoo: Zoo, preset: Preset, tasks: MaterializedTasks, part: ZooPart) -> ArchitectureReport | float:
    name, task, attack = part
    return check_scores(zoo, preset, name, tasks) if task is None or attack is None else \
        check_finetune(zoo, preset, name, tasks, task, attack)


def assemble_reports(preset: Preset, results: dict[ZooPart, ArchitectureReport | float]) -> list[ArchitectureReport]:
    """Each architecture's report from its parts' results, in the order a serial check writes it."""
    rule = preset.validity
    reports = []
    for (name, task, _), report in results.items():
        if task is not None or not isinstance(report, ArchitectureReport):
            continue
        for downstream in preset.zoo.downstream_tasks:
            before = report.base[downstream]
            if before > rule.max_downstream_base:
                report.failures.append(f"{name}: base already scores {before:.3f} on downstream task {downstream} "
                                       f"(> {rule.max_downstream_base})")
            for attack_name in rule.finetune_attacks:
                if (name, downstream, attack_name) not in results:
                    continue  # judged as the grid's fine-tuning attacks against none (grid_judges_finetunes)
                after = float(results[(name, downstream, attack_name)])
                passes = after - before >= rule.min_finetune_gain
                report.finetunes.append(FinetuneCheck(attack_name, downstream, before, after, passes))
                if not passes:
                    report.failures.append(f"{name}: {attack_name} on {downstream} gains {after - before:.3f} "
                                           f"(< {rule.min_finetune_gain})")
        reports.append(report)
    return reports


def validate_architecture(zoo: Zoo, preset: Preset, name: str, tasks: MaterializedTasks) -> ArchitectureReport:
    return validate_zoo(zoo, preset, tasks, [name])[0]


def validate_zoo(zoo: Zoo, preset: Preset, tasks: MaterializedTasks, names: list[str] | None = None
                 ) -> list[ArchitectureReport]:
    """The zoo check in this process, part after part, scoring as the harness's workers do (trimmed lm-eval)."""

    trim_lm_eval_overheads()  # the harness's scoring path: the same accuracies, a seventh of the time
    with compute_threads():  # the fine-tuning checks train: one thread, so results never depend on cores
        parts = zoo_parts(preset, list(zoo.model_names if names is None else names))
        return assemble_reports(preset, {part: check_part(zoo, preset, tasks, part) for part in parts})


# ----------------------------------------------------------------------------- attacks against none

#: A cell whose attack raised this is not applicable (until the harness records such cells as n/a).
NOT_APPLICABLE_ERROR = "AttackNotApplicable"


@dataclass
class AttackCheck:
    """One attack configuration of the grid against `none`, over its cells of one model and format.

    `score` is the mean kept fraction of the expert's gain on the protected task (merge track) or the
    mean gain on the downstream task (finetune track), over every cell of the configuration (DESIGN §6
    applies the rule per attack configuration); `threshold` is what it must reach. `by_members` splits
    the merge score by the number of merged models, since four-expert merges can break where pairs hold.
    """

    attack: str
    attack_key: str
    config: str
    track: str
    model: str
    release_format: str
    cells: int
    weak_cells: int
    not_applicable: int
    failed: int
    score: float
    threshold: float
    seconds_per_cell: float
    by_members: dict[int, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    groups: int = 0  # (task, member set) inputs the rule judged, each over all seeds
    weak_groups: int = 0
    reasons: list[str] = field(default_factory=list)
    family: str = ""

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        if self.cells == self.not_applicable:
            return "n/a"
        return "weak" if self.groups == 0 or self.weak_groups == self.groups else "pass"

    @property
    def passes(self) -> bool:
        return self.status in ("pass", "n/a")


    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status, "passes": self.passes}


def none_only(preset: Preset) -> Preset:
    """The preset with its grid reduced to the unprotected reference: what `check_attacks` runs."""

    if preset.grid is None:
        raise ValueError(f"preset '{preset.name}' has no grid: no attacks to check")
    grid = preset.grid.model_copy(update={"defenses": [PluginSpec(name="none")]})
    return preset.model_copy(update={"grid": grid})


def _mean(values: list[float]) -> float:
    finite = [value for value in values if not math.isnan(value)]
    return sum(finite) / len(finite) if finite else math.nan


def summarise_attack_cells(cells: Any, preset: Preset) -> list[AttackCheck]:
    """Per (attack configuration, model, format) checks from the scored cells of a `none`-only run.

    The verdict is the scoring stage's (`weak`, decided per task and member set over all seeds: one rule,
    bench.results.normalise); `score` is the mean joint kept fraction against the experts' own gains
    (merge) or the mean gain on D (finetune), shown for orientation.
    """

    rule = preset.validity
    checks = []
    reference = cells[cells["defense"] == REFERENCE_DEFENSE]
    keys = ["track", "model", "release_format", "attack", "attack_key"]
    for (track, model, release_format, attack, key), group in reference.groupby(keys, sort=True):
        not_applicable = group["status"].eq("n/a") | (group["status"].eq("failed")
                                                     & group["error"].str.startswith(NOT_APPLICABLE_ERROR))
        failed = group["status"].eq("failed") & ~not_applicable
        ok = group[group["status"].eq("ok")]
        by_members: dict[int, float] = {}
        if track == "merge":
            kept = [joint_kept_vs_experts(row) for _, row in ok.iterrows()]
            score, threshold = _mean(kept), rule.min_kept_fraction
            for n_members in sorted(set(ok["n_members"].tolist())):
                by_members[int(n_members)] = _mean([k for k, n in zip(kept, ok["n_members"], strict=True)
                                                    if n == n_members])
        else:
            score, threshold = _mean(ok["gain_b1"].tolist()), rule.min_finetune_gain
        verdicts = ok.drop_duplicates(list(VALIDITY_KEY))
        checks.append(AttackCheck(
            attack=attack, attack_key=key, config=group["attack_config"].iloc[0], track=track, model=model,
            release_format=release_format, cells=len(group), weak_cells=int(ok["weak"].sum()),
            not_applicable=int(not_applicable.sum()), failed=int(failed.sum()),
            score=score, threshold=threshold, seconds_per_cell=_mean(ok["attack_seconds"].tolist()),
            by_members=by_members, errors=sorted(set(group.loc[failed, "error"].tolist()))[:3],
            groups=len(verdicts), weak_groups=int(verdicts["weak"].sum()),
            reasons=sorted({reason for reason in verdicts["weak_reason"] if reason})[:3],
            family=str(group["attack_family"].iloc[0]),
        ))
    return checks


def check_attacks(preset: Preset, root: Path, out_dir: Path, console: Any = None, executor: Any = "serial",
                  **executor_kwargs: Any) -> tuple[list[AttackCheck], list[str], list[str]]:
    """Run every attack of the preset's grid against `none` and check it (DESIGN §6, per attack).

    Returns the checks, the run-level problems (a track × architecture with no valid attack) and the attack
    families of the grid without a valid attack per track × architecture × format (DESIGN §6: said loudly).
    The cells are the benchmark's own (same storage root, same keys), so `lockbench run` reuses them.
    """

    summary = run_and_write(none_only(preset), root, out_dir, executor, console=console, **executor_kwargs)
    cells = summary.frame
    assert cells is not None
    return summarise_attack_cells(cells, preset), list(summary.problems), family_gaps(cells)


def _where(check: AttackCheck) -> str:
    return f"{check.model}/{check.release_format}: attack {check.attack} {check.config}"


def attack_failures(checks: list[AttackCheck], problems: list[str], weak_attacks: str = "fail") -> list[str]:
    """Messages for attacks that break the rule. Weak attacks, and a track × architecture without any valid
    attack (`problems`), are failures unless the preset says `weak_attacks: warn`: then they are reported
    loudly and published as weak / invalid (DESIGN §6), and only failed cells fail validation."""
    failures = list(problems) if weak_attacks == "fail" else []
    for check in checks:
        if check.status == "failed":
            failures.append(f"{_where(check)} failed in {check.failed} of {check.cells} cells "
                            f"({'; '.join(check.errors)})")
        elif check.status == "weak" and weak_attacks == "fail":
            failures.append(f"{_where(check)} is weak against none on every input ({'; '.join(check.reasons)})")
    return failures


def attack_warnings(checks: list[AttackCheck]) -> list[str]:
    """Configurations weak on some inputs (task, member set) or everywhere under `weak_attacks: warn`: those
    cells are marked weak (a diagnostic: they still count, the attacker's pick on its own split decides)."""
    return [f"{_where(check)} is weak on {check.weak_groups} of its {check.groups} inputs "
            f"({'; '.join(check.reasons)}); marked weak in cells.csv, still open to the attacker's pick"
            for check in checks if check.weak_groups and check.status in ("pass", "weak")]
