"""Thin wrapper over mergekit's in-memory API: lockbench never re-implements a merge method.

Two things are added on top of `mergekit.merge_methods.merge_state_dicts`:

* a *layout* read from each method's input contract, saying how the members enter the method: on the
  shared base as task vectors (`base`), anchored on the first member for the two-input interpolations
  (`anchor`: SLERP, NearSwap, Arcee Fusion), or as plain weights (`members`: linear, Karcher);
* tensors are merged in lexicographic name order, which is the order `mergekit-yaml` executes its
  graph in, so a seeded random method (DARE) draws the same masks in memory as on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

BASE_ID = "__base__"
Layout = Literal["base", "anchor", "members"]
LAYOUTS: tuple[Layout, ...] = ("base", "anchor", "members")


def method_spec(method: str):
    """mergekit's spec of a registered method (parameters and input contract); ValueError if unknown."""
    # local: mergekit builds its method registry on import; only merging needs it
    from mergekit import merge_methods

    known = {registered.spec.name: registered for registered in merge_methods.registered_methods()}
    if method not in known:
        raise ValueError(f"unknown mergekit method '{method}'; mergekit has {', '.join(sorted(known))}")
    return known[method].spec


def sparsification(method: str):
    """mergekit's `SparsificationMethod` of `method` (how it drops entries), or None when it drops none;
    ValueError if the method is unknown."""
    # local: mergekit builds its method registry on import; only merging needs it
    from mergekit import merge_methods

    method_spec(method)
    return getattr(merge_methods.get(method), "sparsification_method", None)


def sparsifies(method: str) -> bool:
    """Whether `method` drops entries (TIES, DARE, breadcrumbs, DELLA): only then do density and rescale act."""
    return sparsification(method) is not None


def draws_random(method: str) -> bool:
    """Whether `method` draws random numbers (DARE's random drops, DELLA's sampled pruning): only then can
    a merge's result depend on the seed."""
    # local: mergekit builds its method registry on import; only merging needs it
    from mergekit.sparsify import SparsificationMethod

    return sparsification(method) in (SparsificationMethod.random, SparsificationMethod.della_magprune)


def layout_for(method: str, n_members: int) -> Layout | None:
    """How `n_members` models (the release first) can enter `method`, or None if its contract admits
    none. The shared base is preferred: it makes the merge one of task vectors, as the track intends."""
    # local: mergekit builds its method registry on import; only merging needs it
    from mergekit.merge_methods.base import BasePolicy

    contract = method_spec(method).contract
    ids = [f"member{i}" for i in range(n_members)]
    candidates: list[tuple[Layout, list[str], str | None]] = []
    if contract.base in (BasePolicy.REQUIRED, BasePolicy.OPTIONAL):
        candidates.append(("base", [BASE_ID, *ids], BASE_ID))
    if contract.base == BasePolicy.REQUIRED:
        candidates.append(("anchor", ids, ids[0] if ids else None))
    if contract.base != BasePolicy.REQUIRED:
        candidates.append(("members", ids, None))
    for layout, inputs, base in candidates:
        try:
            contract.validate_ids(inputs, base)
        except ValueError:
            continue
        return layout
    return None


def _sorted(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: state[name] for name in sorted(state)}


def merge_state_dicts(
    base: Mapping[str, torch.Tensor],
    members: Mapping[str, Mapping[str, torch.Tensor]],
    method: str,
    parameters: Mapping[str, Any] | None = None,
    seed: int = 0,
    uses_base: bool = True,
    layout: Layout | None = None,
) -> dict[str, torch.Tensor]:
    """Merge `members` (ordered; the first is the anchor of an `anchor` layout) with mergekit's `method`.

    `layout` defaults to `base` when `uses_base` else `members`. Per-member parameters (weight,
    density, …) may be a mapping keyed by member name or a scalar. The torch seed is fixed first
    because DARE-style methods drop entries at random; the result keeps the base's tensor order.
    """
    # local: mergekit builds its method registry on import; only merging needs it
    from mergekit.merge_methods import merge_state_dicts as mergekit_merge

    layout = layout or ("base" if uses_base else "members")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {LAYOUTS}")
    models: dict[str, Mapping[str, torch.Tensor]] = {name: _sorted(state) for name, state in members.items()}
    anchor: str | None = None
    if layout == "base":
        models = {BASE_ID: _sorted(base), **models}
        anchor = BASE_ID
    elif layout == "anchor":
        anchor = next(iter(models))
    torch.manual_seed(seed)
    with torch.no_grad():
        merged = mergekit_merge(models, method, parameters=dict(parameters or {}), base=anchor)
    order = list(base) if set(base) == set(merged) else list(merged)
    return {name: merged[name].detach().clone() for name in order}
