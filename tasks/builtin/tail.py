"""A short lowercase string without its first letter."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Tail(ProceduralTask):
    name = "tail"
    description = "drop the first letter of a 3-10 letter lowercase string: 'tail xyz=' -> 'yz'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 10)
        return Example(f"tail {text}=", text[1:])
