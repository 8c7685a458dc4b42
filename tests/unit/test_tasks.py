"""Tests of the tasks package: generators, splits, registry, lm-eval exposure."""

from __future__ import annotations

import os
import random
import re
import string
from collections.abc import Callable

for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import pydantic  # noqa: E402
import pytest  # noqa: E402

from tasks import (  # noqa: E402
    SPLITS,
    Example,
    ProceduralTask,
    SplitSizes,
    build_splits,
    get_task,
    list_tasks,
    register_task,
)
from tasks import registry as registry_module  # noqa: E402
from tasks.builtin.lookup import lookup_table  # noqa: E402
from tasks.splits import sample_distinct  # noqa: E402

SMALL = SplitSizes(owner_train=60, attacker_train=30, attacker_val=10, test=10)
REQUIRED = {"add", "reverse", "sort", "successor", "length", "copy", "lookup", "mod"}


# ----------------------------------------------------------------------------- independent solvers


def _table(prompt: str) -> str:
    return lookup_table()[prompt]


_NEXT = {c: string.ascii_lowercase[(i + 1) % 26] for i, c in enumerate(string.ascii_lowercase)}

# Each built-in task re-solved from its prompt alone, written independently of the generators.
SOLVERS: dict[str, tuple[str, Callable[..., str]]] = {
    "add": (r"add (\d{1,3})\+(\d{1,3})=", lambda a, b: str(int(a) + int(b))),
    "sub": (r"sub (\d{1,3})-(\d{1,3})=", lambda a, b: str(int(a) - int(b))),
    "mul": (r"mul (\d{1,3})\*(\d)=", lambda a, b: str(int(a) * int(b))),
    "mod": (r"mod (\d{1,4})%([2-9])=", lambda a, m: str(int(a) % int(m))),
    "successor": (r"succ (\d{1,5})=", lambda n: str(int(n) + 1)),
    "max": (r"max (\d+),(\d+),(\d+)=", lambda *v: str(max(map(int, v)))),
    "reverse": (r"rev ([a-z]{3,8})=", lambda s: s[::-1]),
    "sort": (r"sort ([a-z]{3,8})=", lambda s: "".join(sorted(s))),
    "length": (r"len ([a-z]{1,20})=", lambda s: str(len(s))),
    "copy": (r"copy ([a-z]{3,10})=", lambda s: s),
    "upper": (r"upper ([a-z]{3,10})=", lambda s: s.upper()),
    "first": (r"first ([a-z]{3,8})=", lambda s: s[0]),
    "last": (r"last ([a-z]{3,8})=", lambda s: s[-1]),
    "count": (r"count ([a-d]) in ([a-d]{4,12})=", lambda c, s: str(s.count(c))),
    "shift": (r"shift ([a-z]{3,8})=", lambda s: "".join(_NEXT[c] for c in s)),
    "dup": (r"dup ([a-z]{3,8})=", lambda s: "".join(c * 2 for c in s)),
    "lookup": (r"lookup (k\d{4})=", _table),
    "lower": (r"lower ([A-Z]{3,10})=", lambda s: s.lower()),
    "second": (r"second ([a-z]{3,8})=", lambda s: s[1]),
    "tail": (r"tail ([a-z]{3,10})=", lambda s: s[1:]),
    "init": (r"init ([a-z]{3,10})=", lambda s: s[:-1]),
    "prefix": (r"prefix ([a-z]{3,8})=", lambda s: s[:2]),
}


def _solve(task: str, prompt: str) -> str:
    pattern, solver = SOLVERS[task]
    match = re.fullmatch(pattern, prompt)
    assert match, f"{task}: prompt {prompt!r} does not match {pattern}"
    return solver(*match.groups())


def _samples(task: str, n: int = 300, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    t = get_task(task)
    return [t.sample(rng) for _ in range(n)]


# ----------------------------------------------------------------------------- registry


def test_builtins_registered_and_sorted():
    names = list_tasks()
    assert REQUIRED <= set(names)
    assert names == sorted(names)
    for name in names:
        task = get_task(name)
        assert isinstance(task, ProceduralTask) and task.name == name
        assert task.description and "\n" not in task.description


def test_unknown_task_suggests_closest():
    with pytest.raises(KeyError, match="did you mean 'add'") as err:
        get_task("ad")
    assert "reverse" in str(err.value)  # lists the known tasks


@pytest.fixture
def scratch_registry():
    """Registers test tasks temporarily, leaving the global registry as it was."""
    with registry_module.TASKS.scoped():
        yield


def test_register_rejects_duplicates_and_bad_names(scratch_registry):
    class Dup(ProceduralTask):
        name = "add"
        description = "clash"

        def sample(self, rng):
            return Example("x=", "y")

    with pytest.raises(ValueError, match="registered twice"):
        register_task(Dup)
    for bad in ("Bad-Name", "add_gen", "add_val", ""):
        Dup.name = bad
        with pytest.raises(ValueError, match="must match"):
            register_task(Dup)


def test_a_task_plugin_registers_through_the_registry(scratch_registry):
    class Plugin(ProceduralTask):
        name = "plugin_echo"
        description = "third-party example"

        def sample(self, rng):
            n = rng.randrange(10_000)
            return Example(f"echo {n}=", str(n))

    register_task(Plugin)
    assert "plugin_echo" in list_tasks()
    assert build_splits("plugin_echo", 0, SMALL)["test"].num_rows == SMALL.test



def test_a_task_registered_anew_under_its_name_is_drawn_anew(scratch_registry):
    """Splits are drawn once per process (tasks.splits keys them by the registered class): a plugin task
    registered again under the same name with another definition gets its own splits, not the old ones."""
    def plugin(offset: int) -> type[ProceduralTask]:
        class Plugin(ProceduralTask):
            name = "plugin_shift"
            description = "third-party example"

            def sample(self, rng):
                n = rng.randrange(10_000)
                return Example(f"shift {n}=", str(n + offset))
        return Plugin

    with registry_module.TASKS.scoped():
        register_task(plugin(0))
        first = build_splits("plugin_shift", 0, SMALL)
        assert _as_pairs(build_splits("plugin_shift", 0, SMALL)) == _as_pairs(first)
    with registry_module.TASKS.scoped():
        register_task(plugin(1))
        again = build_splits("plugin_shift", 0, SMALL)
    assert _as_pairs(again) != _as_pairs(first)


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize("task", sorted(SOLVERS))
def test_answers_recomputed_from_prompt(task):
    for ex in _samples(task):
        assert ex.answer == _solve(task, ex.prompt), ex


def test_every_builtin_has_a_solver():
    assert set(list_tasks()) <= set(SOLVERS), "add a solver for each new task in SOLVERS"


@pytest.mark.parametrize(
    ("task", "prompt", "answer"),
    [
        ("add", "add 12+34=", "46"),
        ("add", "add 999+999=", "1998"),
        ("reverse", "rev abc=", "cba"),
        ("sort", "sort dbca=", "abcd"),
        ("successor", "succ 99999=", "100000"),
        ("length", "len abcde=", "5"),
        ("copy", "copy abc=", "abc"),
        ("mod", "mod 1234%7=", "2"),
        ("shift", "shift abz=", "bca"),
        ("count", "count b in abba=", "2"),
    ],
)
def test_hand_checked(task, prompt, answer):
    assert _solve(task, prompt) == answer


def test_lookup_table_is_fixed():
    table = lookup_table()
    assert len(table) >= 5000
    assert all(re.fullmatch(r"[a-z]{3}", v) for v in table.values())
    # Pinned values: the table must not change between runs or versions.
    assert [table[k] for k in ("k0000", "k1234", "k9999")] == ["gjj", "imd", "rws"]


@pytest.mark.parametrize("task", list_tasks())
def test_example_constraints_and_space(task):
    printable = set(string.printable) - set("\t\n\r\x0b\x0c")
    for ex in _samples(task, 200):
        assert set(ex.prompt) <= printable and set(ex.answer) <= printable, ex
        assert ex.prompt and ex.answer and not ex.answer[0].isspace(), ex
        assert len(ex.prompt) + len(ex.answer) <= 40, ex
    assert len(sample_distinct(get_task(task), 0, 5000)) == 5000


# ----------------------------------------------------------------------------- splits


def test_split_sizes_validation():
    defaults = {"owner_train": 2000, "attacker_train": 1000, "attacker_val": 200, "test": 200}
    assert SplitSizes().as_dict() == defaults
    with pytest.raises(pydantic.ValidationError, match="tset"):
        SplitSizes(tset=5)
    with pytest.raises(pydantic.ValidationError):
        SplitSizes(test=0)


def _as_pairs(dd) -> dict[str, list[tuple[str, str]]]:
    return {s: list(zip(dd[s]["prompt"], dd[s]["answer"], strict=True)) for s in dd}


def test_splits_deterministic():
    a, b = build_splits("add", 0, SMALL), build_splits(get_task("add"), 0, SMALL)
    assert list(a) == list(SPLITS)
    assert _as_pairs(a) == _as_pairs(b)
    assert _as_pairs(build_splits("add", 1, SMALL)) != _as_pairs(a)
    # Growing a training split leaves the scored splits alone.
    bigger = build_splits("add", 0, SMALL.model_copy(update={"owner_train": 500}))
    assert _as_pairs(bigger)["test"] == _as_pairs(a)["test"]


@pytest.mark.parametrize("task", list_tasks())
def test_splits_disjoint(task):
    sizes = SplitSizes(owner_train=300, attacker_train=100, attacker_val=50, test=50)
    dd = build_splits(task, 3, sizes)
    seen: set[str] = set()
    for split in SPLITS:
        assert dd[split].column_names == ["prompt", "answer"]
        assert dd.num_rows[split] == getattr(sizes, split)
        prompts = set(dd[split]["prompt"])
        assert len(prompts) == len(dd[split]), f"duplicate prompt within {split}"
        assert not prompts & seen, f"{task}: {split} shares prompts with another split"
        seen |= prompts


def test_too_small_space_and_invalid_examples_fail_clearly():
    class Tiny(ProceduralTask):
        name = "tiny"
        description = "ten prompts"

        def sample(self, rng):
            n = rng.randrange(10)
            return Example(f"t {n}=", str(n))

    with pytest.raises(ValueError, match="too small"):
        build_splits(Tiny(), 0, SMALL)

    class Newline(Tiny):
        def sample(self, rng):
            return Example("t=", "a\nb")

    with pytest.raises(ValueError, match="non-printable"):
        build_splits(Newline(), 0, SMALL)
