"""Tests of the tasks package: generators, splits, registry, lm-eval exposure."""

from __future__ import annotations

import json
import os
import random
import re
import string
from collections.abc import Callable
from pathlib import Path

for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import pydantic  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

import tasks  # noqa: E402
from tasks import (  # noqa: E402
    SPLITS,
    Example,
    ProceduralTask,
    SplitSizes,
    TaskSource,
    build_splits,
    get_task,
    list_tasks,
    materialize,
    register_task,
)
from tasks import registry as registry_module  # noqa: E402
from tasks.builtin.lookup import lookup_table  # noqa: E402
from tasks.lmeval import METRIC_KEYS  # noqa: E402
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


# ----------------------------------------------------------------------------- TaskSource


def test_task_source_validation(tmp_path):
    assert TaskSource.model_validate("add") == TaskSource(name="add")
    assert TaskSource(name="add").kind == "procedural"
    assert TaskSource(name="hellaswag").kind == "stock"
    assert TaskSource(name="mine", jsonl=tmp_path).kind == "jsonl"
    assert TaskSource(name="mine", lm_eval_yaml=tmp_path / "t.yaml").kind == "lm_eval_yaml"
    with pytest.raises(pydantic.ValidationError, match="not both"):
        TaskSource(name="x", jsonl=tmp_path, lm_eval_yaml=tmp_path / "t.yaml")
    with pytest.raises(pydantic.ValidationError):
        TaskSource(jsonl=tmp_path)  # name is required
    with pytest.raises(pydantic.ValidationError, match="jsnol"):
        TaskSource.model_validate({"name": "x", "jsnol": str(tmp_path)})
    with pytest.raises(pydantic.ValidationError, match="must match"):
        TaskSource(name="a/b")
    with pytest.raises(pydantic.ValidationError, match="yaml"):
        TaskSource(name="x", lm_eval_yaml=tmp_path / "t.json")


# ----------------------------------------------------------------------------- materialize


def _yamls(root: Path) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(root.glob("**/*.yaml"))}


def test_materialize_procedural(tmp_path):
    m = materialize(["add", TaskSource(name="reverse")], 7, SMALL, tmp_path / "a")
    assert m.tasks == ["add", "reverse"] and not m.needs_default_tasks
    assert m.lm_eval_name("add") == "lockbench_add"
    assert m.lm_eval_name("add", "attacker_val") == "lockbench_add_val"
    assert m.lm_eval_name("add", form="gen") == "lockbench_add_gen"
    assert m.lm_eval_name("add", "attacker_val", "gen") == "lockbench_add_gen_val"
    with pytest.raises(ValueError):
        m.lm_eval_name("add", "owner_train")
    for split in SPLITS:
        assert m.split_path("add", split) == tmp_path / "a" / "add" / f"{split}.jsonl"
        assert m.load_split("add", split)["prompt"] == build_splits("add", 7, SMALL)[split]["prompt"]

    configs = _yamls(tmp_path / "a")
    assert len(configs) == 8
    for name, cfg in configs.items():
        assert cfg["task"] == name
        assert cfg["target_delimiter"] == "" and cfg["num_fewshot"] == 0
        assert cfg["dataset_path"] == "json"
        (split, path), = cfg["dataset_kwargs"]["data_files"].items()
        assert cfg["test_split"] == split == ("attacker_val" if name.endswith("_val") else "test")
        assert Path(path).is_absolute() and Path(path).is_file()
        if "_gen" in name:
            assert cfg["output_type"] == "generate_until"
            assert cfg["generation_kwargs"] == {"until": ["\n"], "do_sample": False, "max_gen_toks": 16}
            assert cfg["metric_list"][0]["metric"] == "exact_match"
        else:
            assert cfg["output_type"] == "loglikelihood"
            assert cfg["doc_to_target"] == "{{answer}}\n"
            assert cfg["metric_list"] == [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]


def test_materialize_is_byte_stable_and_idempotent(tmp_path):
    m1 = materialize(["add"], 7, SMALL, tmp_path / "a")
    m2 = materialize(["add"], 7, SMALL, tmp_path / "b")
    for split in SPLITS:
        assert m1.split_path("add", split).read_bytes() == m2.split_path("add", split).read_bytes()
    files = sorted(p for p in (tmp_path / "a").glob("**/*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}
    materialize(["add"], 7, SMALL, tmp_path / "a")
    assert sorted(p for p in (tmp_path / "a").glob("**/*") if p.is_file()) == files  # no temp files left
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    m3 = materialize(["add"], 8, SMALL, tmp_path / "a")
    assert m3.split_path("add", "test").read_bytes() != m2.split_path("add", "test").read_bytes()


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_materialize_jsonl_yaml_and_stock(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_jsonl(data / "test.jsonl", [{"prompt": "q1=", "answer": "a" * 20}])
    _write_jsonl(data / "attacker_val.jsonl", [{"prompt": "q2=", "answer": "b"}])
    single = _write_jsonl(tmp_path / "one.jsonl", [{"prompt": "q3=", "answer": "c"}])
    user_yaml = tmp_path / "mine.yaml"
    user_yaml.write_text("task: my_own\ndataset_path: json\noutput_type: loglikelihood\n")
    m = materialize(
        [
            {"name": "dirtask", "jsonl": str(data)},
            TaskSource(name="onefile", jsonl=single),
            TaskSource(name="mine", lm_eval_yaml=user_yaml),
            "hellaswag",
        ],
        0,
        SMALL,
        tmp_path / "root",
    )
    assert m.needs_default_tasks
    assert m.lm_eval_name("dirtask", "attacker_val", "gen") == "lockbench_dirtask_gen_val"
    assert m.split_path("dirtask", "test") == data / "test.jsonl"
    assert m.load_split("onefile", "test")["answer"] == ["c"]
    with pytest.raises(ValueError, match="no 'attacker_val'"):
        m.lm_eval_name("onefile", "attacker_val")
    with pytest.raises(FileNotFoundError):
        m.split_path("onefile", "owner_train")
    assert m.lm_eval_name("mine") == m.lm_eval_name("mine", form="gen") == "lockbench_mine"
    assert m.lm_eval_name("hellaswag") == "hellaswag"
    with pytest.raises(ValueError):
        m.lm_eval_name("hellaswag", "attacker_val")

    configs = _yamls(tmp_path / "root")
    assert configs["lockbench_dirtask_gen"]["generation_kwargs"]["max_gen_toks"] == 21  # longest answer + 1
    assert configs["lockbench_mine"] == {"include": str(user_yaml), "task": "lockbench_mine"}
    assert not any("hellaswag" in name for name in configs)
    indexed = tasks.task_manager(m.include_path).all_tasks
    assert {"lockbench_mine", "lockbench_dirtask_val", "lockbench_onefile_gen"} <= set(indexed)


def test_materialize_rejects_bad_inputs(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q=", "answer": 3}])
    with pytest.raises(ValueError, match="string fields"):
        materialize([TaskSource(name="bad", jsonl=bad)], 0, SMALL, tmp_path / "r")
    with pytest.raises(FileNotFoundError):
        materialize([TaskSource(name="gone", jsonl=tmp_path / "nope")], 0, SMALL, tmp_path / "r")
    with pytest.raises(ValueError, match="more than once"):
        materialize(["add", "add"], 0, SMALL, tmp_path / "r")
    good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": "q=", "answer": "a"}])
    with pytest.raises(ValueError, match="would belong"):  # lockbench_add_gen would be ambiguous
        materialize(["add", TaskSource(name="add_gen", jsonl=good)], 0, SMALL, tmp_path / "clash")
    assert not list((tmp_path / "clash").glob("**/*.yaml"))


def test_task_manager_indexes_and_is_cached(tmp_path):
    root = tmp_path / "root"
    materialize(["add"], 0, SMALL, root)
    tm = tasks.task_manager(root)
    assert tasks.task_manager(root) is tm
    expected = {"lockbench_add", "lockbench_add_val", "lockbench_add_gen", "lockbench_add_gen_val"}
    assert expected <= set(tm.all_tasks)
    materialize(["reverse"], 0, SMALL, root)  # new YAMLs: the cached manager must not be reused
    tm2 = tasks.task_manager(root)
    assert tm2 is not tm and "lockbench_reverse" in tm2.all_tasks


# ----------------------------------------------------------------------------- lm-eval end to end


def _char_tokenizer():
    from bench.zoo.tokenizer import build_tokenizer

    return build_tokenizer()


def _gpt2(vocab_size: int, n_embd: int, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=n_embd, n_layer=1, n_head=1,
        bos_token_id=1, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def _evaluate(model, tok, names: list[str], include_path: Path, limit: int | None):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=8, device="cpu", max_length=64)
    return lm_eval.simple_evaluate(
        model=lm, tasks=names, task_manager=tasks.task_manager(include_path), limit=limit, log_samples=True
    )


@pytest.mark.slow
def test_lm_eval_smoke(tmp_path):
    tok = _char_tokenizer()
    m = materialize(["add", "reverse"], 0, SMALL, tmp_path / "root")
    names = [m.lm_eval_name("add"), m.lm_eval_name("add", form="gen")]
    out = _evaluate(_gpt2(len(tok), 32), tok, names, m.include_path, limit=4)
    acc = out["results"]["lockbench_add"][METRIC_KEYS["loglikelihood"]]
    em = out["results"]["lockbench_add_gen"][METRIC_KEYS["gen"]]
    assert 0.0 <= acc <= 1.0 and 0.0 <= em <= 1.0
    # The log-likelihood request is exactly (prompt, answer + newline): no delimiter added.
    doc = out["samples"]["lockbench_add"][0]
    assert doc["arguments"][0] == (doc["doc"]["prompt"], doc["doc"]["answer"] + "\n")


@pytest.mark.slow
def test_gen_and_loglikelihood_forms_agree(tmp_path):
    """A hand-wired GPT-2 whose greedy next token depends only on the current one ('=' -> 'a' ->
    'b' -> newline) scores each doc the same in both forms, including non-trivial passes."""
    import torch

    tok = _char_tokenizer()
    vocab = tok.get_vocab()
    model = _gpt2(len(tok), len(tok))
    with torch.no_grad():
        block = model.transformer.h[0]
        for proj in (block.attn.c_proj, block.mlp.c_proj):  # the block becomes the identity
            proj.weight.zero_()
            proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight.copy_(torch.eye(len(tok)) * 10)
        model.lm_head.weight.zero_()
        for cur, nxt in (("=", "a"), ("a", "b"), ("b", "\n")):
            model.lm_head.weight[vocab[nxt], vocab[cur]] = 5.0
    rows = [("q1=", "ab"), ("q2=", "a"), ("q3=", "abc"), ("q4=", "b"), ("qa", "b"), ("q5a", "bc")]
    data = _write_jsonl(tmp_path / "bigram.jsonl", [{"prompt": p, "answer": a} for p, a in rows])
    m = materialize([TaskSource(name="bigram", jsonl=data)], 0, SMALL, tmp_path / "root")
    names = [m.lm_eval_name("bigram"), m.lm_eval_name("bigram", form="gen")]
    out = _evaluate(model, tok, names, m.include_path, limit=None)
    ll = [s["acc"] for s in sorted(out["samples"][names[0]], key=lambda s: s["doc_id"])]
    gen = [s["exact_match"] for s in sorted(out["samples"][names[1]], key=lambda s: s["doc_id"])]
    assert ll == gen == [1, 0, 0, 0, 1, 0]
