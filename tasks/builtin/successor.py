"""Successor of a number in 0-99999 (exercises carries such as 999 -> 1000)."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import number
from tasks.registry import register_task


@register_task
class Successor(ProceduralTask):
    name = "successor"
    description = "n+1 for n in 0-99999: 'succ 99=' -> '100'"

    def sample(self, rng: random.Random) -> Example:
        n = number(rng, 5)
        return Example(f"succ {n}=", str(n + 1))
