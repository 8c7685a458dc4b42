"""The tasks package's lm-eval exposure: task sources, materialising task YAMLs (procedural, JSONL, stock),
and lm-eval end to end on a tiny model (split from tests/unit/test_tasks.py: generators, splits, registry)."""

from __future__ import annotations

import json
import os
from pathlib import Path

for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import pydantic  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

import tasks  # noqa: E402
from tasks import SPLITS, SplitSizes, TaskSource, build_splits, materialize  # noqa: E402
from tasks.lmeval import METRIC_KEYS  # noqa: E402

SMALL = SplitSizes(owner_train=60, attacker_train=30, attacker_val=10, test=10)


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
