"""Subtraction with a non-negative result, operands in 0-999."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.registry import register_task


@register_task
class Sub(ProceduralTask):
    name = "sub"
    description = "difference a-b of integers 0-999 with a>=b: 'sub 50-12=' -> '38'"

    def sample(self, rng: random.Random) -> Example:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        a, b = max(a, b), min(a, b)
        return Example(f"sub {a}-{b}=", str(a - b))
