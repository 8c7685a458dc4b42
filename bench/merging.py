"""Thin wrapper over mergekit's in-memory API: lockbench never re-implements a merge method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

BASE_ID = "__base__"


def merge_state_dicts(
    base: Mapping[str, torch.Tensor],
    members: Mapping[str, Mapping[str, torch.Tensor]],
    method: str,
    parameters: Mapping[str, Any] | None = None,
    seed: int = 0,
    uses_base: bool = True,
) -> dict[str, torch.Tensor]:
    """Merge `members` onto `base` with mergekit's `method`.

    Per-member parameters (weight, density, …) may be given as a mapping keyed by member name or as a
    scalar. The torch seed is fixed first because DARE-style methods drop entries at random.
    """
    from mergekit.merge_methods import merge_state_dicts as mergekit_merge

    models: dict[str, Mapping[str, torch.Tensor]] = dict(members)
    if uses_base:
        models = {BASE_ID: base, **models}
    torch.manual_seed(seed)
    with torch.no_grad():
        merged = mergekit_merge(
            models,
            method,
            parameters=dict(parameters or {}),
            base=BASE_ID if uses_base else None,
        )
    return {name: tensor.detach().clone() for name, tensor in merged.items()}
