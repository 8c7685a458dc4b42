"""Largest of three numbers in 0-99."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.registry import register_task


@register_task
class Max(ProceduralTask):
    name = "max"
    description = "largest of three integers 0-99: 'max 12,7,45=' -> '45'"

    def sample(self, rng: random.Random) -> Example:
        values = [rng.randint(0, 99) for _ in range(3)]
        return Example(f"max {','.join(map(str, values))}=", str(max(values)))
