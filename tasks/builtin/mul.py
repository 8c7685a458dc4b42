"""Multiplication of a number in 0-999 by a digit."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.registry import register_task


@register_task
class Mul(ProceduralTask):
    name = "mul"
    description = "product of an integer 0-999 and a digit 0-9: 'mul 12*7=' -> '84'"

    def sample(self, rng: random.Random) -> Example:
        a, b = rng.randint(0, 999), rng.randint(0, 9)
        return Example(f"mul {a}*{b}=", str(a * b))
