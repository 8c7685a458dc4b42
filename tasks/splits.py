"""Deterministic, disjoint splits of a procedural task.

Disjointness is by prompt: an attacker tuning on its split or a defense trained on the owner's split
never sees a test prompt (DESIGN.md §2).
"""

from __future__ import annotations

import functools
import random

import datasets

from tasks.base import SPLITS, Example, ProceduralTask, SplitSizes, example_problems
from tasks.registry import get_task

# Splits are filled in this order from one stream of distinct examples, so `test` depends only on
# (task, seed, sizes.test) and `attacker_val` also on sizes.test: growing a training split never
# changes what is scored.
_FILL_ORDER = ("test", "attacker_val", "attacker_train", "owner_train")
assert sorted(_FILL_ORDER) == sorted(SPLITS)


def _resolve(task: str | ProceduralTask) -> ProceduralTask:
    return get_task(task) if isinstance(task, str) else task


def sample_distinct(task: ProceduralTask, seed: int, count: int) -> list[Example]:
    """`count` examples with pairwise distinct prompts, reproducible from (task.name, seed).

    The RNG is seeded with a string (hashed with SHA-512 by `random`), never Python's salted hash().
    """
    rng = random.Random(f"{task.name}:{seed}")
    seen: dict[str, str] = {}
    out: list[Example] = []
    max_draws = 50 * count + 10_000
    draws = 0
    while len(out) < count:
        if draws >= max_draws:
            raise ValueError(
                f"task {task.name!r}: only {len(out)} distinct prompts after {draws} draws, "
                f"{count} needed; its example space is too small for these split sizes"
            )
        draws += 1
        example = task.sample(rng)
        previous = seen.get(example.prompt)
        if previous is None:
            problems = example_problems(example, task.max_example_chars, task.ascii_only)
            if problems:
                raise ValueError(f"task {task.name!r} produced an invalid {example!r}: {'; '.join(problems)}")
            seen[example.prompt] = example.answer
            out.append(example)
        elif previous != example.answer:
            raise ValueError(
                f"task {task.name!r} gave two answers for prompt {example.prompt!r}: "
                f"{previous!r} and {example.answer!r}"
            )
    return out


def build_splits(task: str | ProceduralTask, seed: int, sizes: SplitSizes) -> datasets.DatasetDict:
    """The four SPLITS of `task` as datasets with string columns `prompt` and `answer`.

    A registered task's splits are drawn once per process and handed out as a new DatasetDict of the
    same (immutable) datasets: drawing them costs about 0.1 s, and a run asks for them thousands of
    times (each cell for its task and members, each zoo training and owner view for the replay mixture);
    profiled on `default`, a third of a merge cell's time went here. The datasets are shared: use
    `with_format`, never the in-place `set_format`."""
    if isinstance(task, str):
        sized = tuple(sizes.as_dict().items())
        return datasets.DatasetDict(_registered_splits(task, type(get_task(task)), seed, sized))
    return _draw_splits(task, seed, sizes)


@functools.lru_cache(maxsize=256)
def _registered_splits(name: str, kind: type, seed: int, sizes: tuple[tuple[str, int], ...]
                       ) -> datasets.DatasetDict:
    """`kind`, the task's registered class, keys the cache: a task registered anew is drawn anew."""
    return _draw_splits(name, seed, SplitSizes(**dict(sizes)))


def _draw_splits(task: str | ProceduralTask, seed: int, sizes: SplitSizes) -> datasets.DatasetDict:
    resolved = _resolve(task)
    wanted = sizes.as_dict()
    examples = sample_distinct(resolved, seed, sum(wanted.values()))
    chunks: dict[str, list[Example]] = {}
    start = 0
    for split in _FILL_ORDER:
        chunks[split] = examples[start : start + wanted[split]]
        start += wanted[split]
    features = datasets.Features({"prompt": datasets.Value("string"), "answer": datasets.Value("string")})
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "prompt": [ex.prompt for ex in chunks[split]],
                    "answer": [ex.answer for ex in chunks[split]],
                },
                features=features,
            )
            for split in SPLITS
        }
    )
