"""Versions of lockbench and the components every published number depends on."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

COMPONENTS = {"lockbench": "lockbench", "torch": "torch", "transformers": "transformers", "peft": "peft",
              "mergekit": "mergekit", "lm_eval": "lm_eval"}


@functools.cache
def versions() -> dict[str, str]:
    found = {}
    for column, distribution in COMPONENTS.items():
        try:
            found[f"{column}_version"] = version(distribution)
        except PackageNotFoundError:
            found[f"{column}_version"] = "missing"
    return found
