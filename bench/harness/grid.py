"""The benchmark grid: which defenses, attacks, models, tasks and seeds, expanded into cells."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bench.config import ConfigError
from bench.harness.controls import CONTROL_DEFENSE, control_config
from bench.plugins import ATTACKS, DEFENSES, ReleaseFormat, Track
from bench.presets.grid import GridConfig, PluginSpec
from bench.runtime.storage import content_hash


@dataclass(frozen=True)
class DefenseJob:
    """One release to produce: (defense, track, format, model, protected task, seed)."""

    defense: str
    defense_label: str
    defense_config: str  # canonical JSON
    track: Track
    release_format: ReleaseFormat
    model: str
    task: str | None
    seed: int

    @property
    def key(self) -> str:
        return content_hash("defend", self.defense, self.defense_config, self.track, self.release_format,
                            self.model, self.task, self.seed)


@dataclass(frozen=True)
class Cell:
    """One attack on one release, scored against the same attack on `none`."""

    defense: DefenseJob
    attack: str
    attack_label: str
    attack_config: str  # canonical JSON
    task: str
    members: tuple[str, ...]

    @property
    def attack_key(self) -> str:
        return content_hash("attack", self.attack, self.attack_config)

    @property
    def key(self) -> str:
        return content_hash("cell", self.defense.key, self.attack_key, self.task, list(self.members))


def budget_references(grid: GridConfig) -> dict[str, str]:
    """Defense label → the label of its same-budget negative control in this grid (`Defense.budget_control`),
    for the defenses that declare one and whose control the grid runs; the others are judged against
    `none`. A control that is its own reference (λ = 0 at that budget) maps to itself."""
    labels = {(spec.name, _canonical_config(DEFENSES, spec)): spec.display for spec in grid.defenses}
    found = {}
    for spec in grid.defenses:
        cls = DEFENSES.get(spec.name)
        control = cls.budget_control(cls.Config.model_validate(spec.config))
        if control is not None:
            key = (spec.name, json.dumps(control.model_dump(mode="json", by_alias=True), sort_keys=True))
            if key in labels:
                found[spec.display] = labels[key]
    return found


def _canonical_config(registry, spec: PluginSpec) -> str:
    """Validate a plugin's config against its schema and return it as canonical JSON."""
    try:
        cls = registry.get(spec.name)
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from error
    try:
        config = cls.Config.model_validate(spec.config)
    except Exception as error:
        raise ConfigError(f"{registry.kind} '{spec.name}': {error}".splitlines()[0] + " " +
                         "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())) from error
    return json.dumps(config.model_dump(mode="json", by_alias=True), sort_keys=True)


def with_controls(cells: list[Cell]) -> list[Cell]:
    """`cells` followed by their controls (DESIGN §5): for every attack configuration on every input, the
    same attack against the control release of its track (bench.harness.controls), once per (model,
    format, task, members, attack, seed) however many defenses share it."""

    controls: dict[Cell, None] = {}
    for cell in cells:
        job = cell.defense
        control = DefenseJob(CONTROL_DEFENSE, CONTROL_DEFENSE, control_config(job.track), job.track,
                             job.release_format, job.model, job.task, job.seed)
        controls[Cell(control, cell.attack, cell.attack_label, cell.attack_config, cell.task, cell.members)] = None
    return [*cells, *controls]


def expand(grid: GridConfig, expert_tasks: dict[str, list[str]], downstream_tasks: list[str]) -> list[Cell]:
    """All cells of the grid, their controls last. `expert_tasks` maps each zoo model to its merge-track
    tasks."""

    reserved = [spec.display for spec in grid.defenses if CONTROL_DEFENSE in (spec.name, spec.display)]
    if reserved:
        raise ConfigError(f"grid defenses name '{CONTROL_DEFENSE}', which is reserved for the harness's own "
                          "release-free and from-scratch controls (DESIGN §5): rename it")
    chosen_models = grid.models or list(expert_tasks)
    unknown = sorted(set(chosen_models) - set(expert_tasks))
    if unknown:
        raise ConfigError(f"grid names models {unknown} that the zoo does not have ({sorted(expert_tasks)})")
    merge_models = chosen_models if grid.merge_models is None else grid.merge_models
    unknown = sorted(set(merge_models) - set(chosen_models))
    if unknown:
        raise ConfigError(f"grid merge_models names {unknown}, which are not among the grid's models "
                          f"({sorted(chosen_models)})")
    downstream = grid.downstream_tasks or downstream_tasks
    unknown = sorted(set(downstream) - set(downstream_tasks))
    if unknown:
        raise ConfigError(f"grid downstream_tasks names {unknown}, which are not the zoo's ({sorted(downstream_tasks)})")
    for model in chosen_models:
        unknown = sorted(set(grid.protected_tasks or []) - set(expert_tasks[model]))
        if unknown:
            raise ConfigError(f"grid protected_tasks names {unknown}, which are not expert tasks of zoo model "
                              f"'{model}' ({sorted(expert_tasks[model])})")
    cells: list[Cell] = []
    for defense_spec in grid.defenses:
        defense_config = _canonical_config(DEFENSES, defense_spec)
        defense_cls = DEFENSES.get(defense_spec.name)  # known: _canonical_config checked it
        for model in chosen_models:
            model_tasks = expert_tasks[model]
            protected = grid.protected_tasks or model_tasks
            for seed in grid.seeds:
                if "merge" in defense_cls.tracks and model in merge_models:
                    for release_format in grid.release_formats:
                        for index, task in enumerate(protected):
                            job = DefenseJob(defense_spec.name, defense_spec.display, defense_config, "merge",
                                             release_format, model, task, seed)
                            for n_members in grid.n_members:
                                if n_members > len(model_tasks):
                                    raise ConfigError(
                                        f"n_members {n_members} exceeds zoo model '{model}''s {len(model_tasks)} "
                                        "expert tasks: the protected task's own expert would be merged back in")
                                others = [model_tasks[(model_tasks.index(task) + k) % len(model_tasks)]
                                          for k in range(1, n_members)]
                                for attack_spec in grid.merge_attacks:
                                    if attack_spec.n_members is not None and n_members not in attack_spec.n_members:
                                        continue
                                    cells.append(Cell(job, attack_spec.name, attack_spec.display,
                                                      _canonical_config(ATTACKS, attack_spec), task,
                                                      tuple(others)))
                            del index
                if "finetune" in defense_cls.tracks:
                    job = DefenseJob(defense_spec.name, defense_spec.display, defense_config, "finetune", "full",
                                     model, None, seed)
                    for task in downstream:
                        for attack_spec in grid.finetune_attacks:
                            cells.append(Cell(job, attack_spec.name, attack_spec.display,
                                              _canonical_config(ATTACKS, attack_spec), task, ()))
    return with_controls(cells)


def shared_controls(cells: list[Cell]) -> dict[int, int]:
    """Control cells computed once for every seed: {index of a control cell: index of the cell computed in
    its place}. A merge-track control's release is the public base (or a zero LoRA update) and the public
    world has no seed, so an attack that declares itself seed-free (`Attack.seed_free`) gives the same
    control at every seed (measured bit for bit: per_member, the TIES coefficient search and align_to_base
    at three seeds); its cell at the grid's first seed stands in for the others."""

    first: dict[tuple, int] = {}
    shared: dict[int, int] = {}
    for index, cell in sorted(enumerate(cells), key=lambda pair: pair[1].defense.seed):
        job = cell.defense
        if job.defense != CONTROL_DEFENSE or job.track != "merge":
            continue
        attack_cls = ATTACKS.get(cell.attack)
        if not attack_cls.seed_free(attack_cls.Config.model_validate_json(cell.attack_config)):
            continue
        where = (job.release_format, job.model, job.task, cell.attack_key, cell.task, cell.members)
        if where in first:
            shared[index] = first[where]
        else:
            first[where] = index
    return shared


def copied_control(record: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The record of a shared control (`shared_controls`) for `cell`, a seed it was not computed at: the same
    numbers under the cell's own seed, with no time of its own (the work was done once)."""
    return {**record, "seed": cell.defense.seed, "attack_seconds": 0.0, "defense_seconds": 0.0}
