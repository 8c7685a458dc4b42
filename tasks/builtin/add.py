"""Addition of two numbers in 0-999."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.registry import register_task


@register_task
class Add(ProceduralTask):
    name = "add"
    description = "sum of two integers in 0-999: 'add 12+34=' -> '46'"

    def sample(self, rng: random.Random) -> Example:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        return Example(f"add {a}+{b}=", str(a + b))
