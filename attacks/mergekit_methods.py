"""One merge attack per method in mergekit's registry, generated from it rather than listed by hand.

For every registered method that can merge two or more models (its input contract says how: on the
shared base, anchored on the release, or as plain weights — `bench.toolkit.merging.layout_for`), this module
creates an `Attack` subclass named after the method, with a pydantic config built from the method's own
parameter specs (types, shared or per-member scope, defaults) and a default parameter grid that presets
expand into one cell per configuration. A method mergekit adds later gets an attack automatically; one
that needs a parameter the registry leaves without a default gets one from `REQUIRED_DEFAULTS`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, create_model

from attacks.common import MergeInputs, merge_knobs
from bench.config import StrictModel
from bench.plugins import Attack, AttackFamily, AttackOutput, PublicView, register_attack
from bench.toolkit.merging import Layout, layout_for, method_spec

#: Values for parameters the registry leaves required (per method, then for any method).
REQUIRED_DEFAULTS: dict[str | None, dict[str, Any]] = {
    None: {"weight": 1.0, "t": 0.5},
    # NearSwap's t is a distance threshold on single weights; 0.5 would swap in the whole other model.
    "nearswap": {"t": 1e-3},
}

#: Default grid per method (each entry one cell's config). Not listed: the method's default config.
#: Sparsifying methods get two densities; task arithmetic also its normalised form (plain averaging,
#: exactly the down-scaling Trap² punishes).
DEFAULT_GRIDS: dict[str, list[dict[str, Any]]] = {
    "task_arithmetic": [{"weight": 1.0}, {"weight": 0.5}, {"weight": 1.0, "normalize": True}],
    "ties": [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5, "normalize": False}],
    "dare_ties": [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.8}],
    "dare_linear": [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.8}],
    "breadcrumbs": [{"weight": 1.0, "density": 0.9, "gamma": 0.01}],
    "breadcrumbs_ties": [{"weight": 1.0, "density": 0.9, "gamma": 0.01}],
    "della": [{"weight": 1.0, "density": 0.5, "epsilon": 0.15}],
    "della_linear": [{"weight": 1.0, "density": 0.5, "epsilon": 0.15}],
    "sce": [{"select_topk": 1.0}, {"select_topk": 0.5}],
    "linear": [{"weight": 1.0}],
    "slerp": [{"t": 0.5}],
    "nuslerp": [{"weight": 1.0}],
    "multislerp": [{"weight": 1.0}],
}

_LAYOUT_WORDS: dict[Layout, str] = {
    "base": "on the shared base",
    "anchor": "anchored on the release",
    "members": "as plain weights, without the base",
}
_MAX_MEMBERS_PROBED = 8


class MergeMethodConfig(StrictModel):
    """Base of the generated configs: fields are mergekit's parameters (`lambda` is spelt `lambda_`)."""

    def mergekit_parameters(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class MergeMethodAttack(Attack[MergeMethodConfig]):
    """Base of the generated family: one fixed mergekit configuration of the release and the experts."""

    track = "merge"
    family = "rescaling"
    method: ClassVar[str]
    member_counts: ClassVar[tuple[int, ...]]  # model counts (release + experts) the contract admits
    default_grid: ClassVar[list[dict[str, Any]]]

    @classmethod
    def attack_family(cls, config: StrictModel) -> AttackFamily:
        """Task arithmetic at weight 1 (λ 1, not normalised) adds the release's update unchanged: pinned.
        Every other configuration re-scales it: a weight or λ ≠ 1, normalisation, sparsification
        (TIES, DARE, …) or interpolation (linear, SLERP, …)."""
        assert isinstance(config, MergeMethodConfig)
        parameters = config.mergekit_parameters()
        unchanged = (parameters.get("weight") == 1.0 and parameters.get("lambda", 1.0) == 1.0
                     and not parameters.get("normalize", False))
        return "pinned" if cls.method == "task_arithmetic" and unchanged else "rescaling"

    def run(self, view: PublicView) -> AttackOutput:
        inputs = MergeInputs.from_view(view)
        layout = inputs.layout(self.method)
        parameters = self.config.mergekit_parameters()
        merged = inputs.merge(self.method, parameters, layout)
        return AttackOutput(models={1.0: merged}, knobs=merge_knobs(self.method, parameters, layout, view.seed))


def _field_name(parameter: str) -> str:
    return f"{parameter}_" if parameter in {"lambda"} else parameter


def _config_class(method: str) -> type[MergeMethodConfig]:
    # local: mergekit builds its method registry on import; only merging needs it
    from mergekit.merge_methods.base import MISSING, ParameterScope

    fields: dict[str, Any] = {}
    fallback = {**REQUIRED_DEFAULTS[None], **REQUIRED_DEFAULTS.get(method, {})}
    for parameter in method_spec(method).parameters:
        scope = "one value for every member" if parameter.scope != ParameterScope.SHARED else "shared"
        default = parameter.default if parameter.default is not MISSING else fallback.get(parameter.name, ...)
        bounds = {"ge": 0.0, "le": 1.0} if parameter.name == "density" else {}
        fields[_field_name(parameter.name)] = (parameter.value_type, Field(
            default, alias=parameter.name if _field_name(parameter.name) != parameter.name else None,
            description=f"mergekit '{parameter.name}' ({scope})", **bounds))
    name = "".join(part.title() for part in method.split("_")) + "Config"
    return create_model(name, __base__=MergeMethodConfig, __module__=__name__, **fields)


def _make_attack(method: str, counts: tuple[int, ...]) -> type[MergeMethodAttack]:
    spec = method_spec(method)
    layouts = sorted({layout for n in counts if (layout := layout_for(method, n)) is not None})
    members = f"{counts[0]} models only" if len(counts) == 1 else f"≥ {counts[0]} models"
    description = (f"mergekit {spec.pretty_name or method} of the release with the public experts, "
                   f"{' / '.join(_LAYOUT_WORDS[layout] for layout in layouts)} ({members})")
    return type(f"Merge{''.join(part.title() for part in method.split('_'))}", (MergeMethodAttack,), {
        "__module__": __name__, "__doc__": description, "name": method, "description": description,
        "method": method, "member_counts": counts, "Config": _config_class(method),
        "default_grid": DEFAULT_GRIDS.get(method, [{}]),
    })


def _generate() -> tuple[dict[str, type[MergeMethodAttack]], dict[str, str]]:
    """Register one attack per applicable registered method; return them and the skipped ones."""
    # local: mergekit builds its method registry on import; only merging needs it
    from mergekit.merge_methods import registered_methods

    made: dict[str, type[MergeMethodAttack]] = {}
    skipped: dict[str, str] = {}
    for registered in registered_methods():
        method = registered.spec.name
        counts = tuple(n for n in range(2, _MAX_MEMBERS_PROBED + 1) if layout_for(method, n) is not None)
        if not counts:
            skipped[method] = "its input contract admits fewer than two models: nothing to merge"
            continue
        made[method] = register_attack(_make_attack(method, counts))
    return made, skipped


MERGE_ATTACKS, SKIPPED_METHODS = _generate()
