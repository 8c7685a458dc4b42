"""Upper-casing a short lowercase string."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Upper(ProceduralTask):
    name = "upper"
    description = "upper-case a 3-10 letter lowercase string: 'upper abc=' -> 'ABC'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 10)
        return Example(f"upper {text}=", text.upper())
