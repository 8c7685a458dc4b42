"""Remainder of a number in 0-9999 modulo a small divisor."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.registry import register_task


@register_task
class Mod(ProceduralTask):
    name = "mod"
    description = "a mod m for a in 0-9999, m in 2-9: 'mod 1234%7=' -> '2'"

    def sample(self, rng: random.Random) -> Example:
        a, m = rng.randint(0, 9999), rng.randint(2, 9)
        return Example(f"mod {a}%{m}=", str(a % m))
