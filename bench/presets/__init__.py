"""Presets: validated YAML files that fix the zoo, the validity rule and (later) the benchmark grid."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError

from bench.config import StrictModel
from bench.presets.grid import GridConfig
from bench.results.normalise import ValidityRule
from bench.toolkit.finetuning import FinetuneRecipe
from bench.zoo.config import ZooConfig


class ValidityConfig(ValidityRule):
    """DESIGN §6's validity rule (the thresholds: `bench.results.ValidityRule`) and the attacks the zoo is
    checked with."""

    merge_coefficients: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])
    finetune_attacks: dict[str, FinetuneRecipe]
    weak_attacks: Literal["fail", "warn"] = Field(
        "fail", description="a grid attack that is weak against `none` (or a zoo expert below the rule) fails "
        "validation, or (warn) is only reported loudly. Either way its cells are marked weak as a diagnostic and "
        "still count: the attacker picks per input on its own split, and an input is void only when `none`'s pick "
        "keeps too little (DESIGN §6)")

    def rule(self) -> ValidityRule:
        """The thresholds alone, as the scoring stage applies them."""
        return ValidityRule(**{name: getattr(self, name) for name in ValidityRule.model_fields})


class Preset(StrictModel):
    name: str
    description: str
    zoo: ZooConfig
    validity: ValidityConfig
    grid: GridConfig | None = None


class PresetError(ValueError):
    """A preset that cannot be loaded; the message is one line meant for the user."""


def preset_names() -> list[str]:
    folder = resources.files("bench") / "presets"
    return sorted(Path(str(entry)).stem for entry in folder.iterdir() if str(entry).endswith(".yaml"))


def section_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys allowed where pydantic reports an unknown key at `loc` (its last part), from the pydantic model
    of that very section: `grid.seedz` is compared with GridConfig's fields only, never with another
    section's. Empty when the section is not a model reachable from Preset."""
    model = _model_at(Preset, list(loc[:-1]))
    if model is None:
        return []
    return sorted(info.alias or name for name, info in model.model_fields.items())


def _model_at(annotation: Any, path: list[int | str]) -> type[BaseModel] | None:
    """The pydantic model reached from `annotation` by a pydantic error location: field names step into a
    model, list indices and dict keys into the item type, a union's tag (e.g. its class name) into that
    member."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not path:
            return annotation
        info = annotation.model_fields.get(str(path[0])) or next(
            (info for info in annotation.model_fields.values() if info.alias == path[0]), None)
        return _model_at(info.annotation, path[1:]) if info is not None else None
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    origin = get_origin(annotation)
    if origin in (list, tuple, set, frozenset, dict) and path:
        return _model_at(args[-1], path[1:]) if args else None
    if args:  # a union (or Optional): the member the location names, else the only model member
        tagged = [arg for arg in args if getattr(arg, "__name__", None) == path[0]] if path else []
        if tagged:
            return _model_at(tagged[0], path[1:])
        found = [model for arg in args if (model := _model_at(arg, path)) is not None]
        return found[0] if len(found) == 1 else None
    return None


def _format_validation_error(source: str, error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(item["loc"][-1]), section_keys(tuple(item["loc"])), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown key '{where}'{hint}")
        else:
            problems.append(f"{where}: {item['msg']}")
    return f"invalid preset {source}: " + "; ".join(problems)


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def yaml_error_line(error: yaml.YAMLError, source: str | None = None) -> str:
    """`FILE:LINE:COLUMN: not valid YAML: PROBLEM (CONTEXT)` for a YAML syntax error: the parser's own message
    spans several lines and puts the position last, where a one-line error would cut it off. `source` names
    the file when the parser read a string (its mark then says `<unicode string>`)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = source or (mark.name if mark is not None else "<yaml>")
    problem = getattr(error, "problem", None) or (str(error).strip().splitlines() or ["unreadable"])[0]
    context = getattr(error, "context", None)
    detail = f"{problem} ({context})" if context else problem
    if mark is None:
        return f"{where}: not valid YAML: {detail}"
    return f"{where}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {detail}"


def yaml_error_in(error: BaseException) -> yaml.YAMLError | None:
    """The YAML syntax error behind `error` (itself or a cause), e.g. a task YAML that lm-eval failed to read."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, yaml.YAMLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _read_preset_data(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Raw YAML data of a preset, with `extends: OTHER` resolved by deep-merging onto OTHER."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise PresetError(f"preset file not found: {path}")
        text, source = path.read_text(), str(path)
    else:
        names = preset_names()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise PresetError(f"unknown preset '{name_or_path}'{hint}; known: {', '.join(names)}")
        packaged = resources.files("bench") / "presets" / f"{name_or_path}.yaml"
        text, source = packaged.read_text(), name_or_path
        path = Path(str(packaged))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PresetError(f"preset {yaml_error_line(error, str(path))}") from error
    if not isinstance(data, dict):
        raise PresetError(f"preset {source} must be a YAML mapping")
    parent = data.pop("extends", None)
    if parent is not None:
        if parent in seen:
            raise PresetError(f"preset {source} extends itself through {' -> '.join(seen)}")
        parent_data, _ = _read_preset_data(str(parent), (*seen, source))
        data = _deep_merge(parent_data, data)
    return data, source


def load_preset(name_or_path: str) -> Preset:
    """Load a packaged preset by name or any YAML file by path (`extends: NAME` inherits from another)."""
    data, source = _read_preset_data(name_or_path)
    try:
        return Preset.model_validate(data)
    except ValidationError as error:
        raise PresetError(_format_validation_error(source, error)) from error
