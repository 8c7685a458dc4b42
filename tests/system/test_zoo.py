"""Zoo build, content-addressed cache reuse, and reload through Hugging Face loaders."""

from __future__ import annotations

import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import bench.zoo.build
import bench.zoo.recipes

pytestmark = pytest.mark.slow


def test_zoo_layout_is_hugging_face_format(micro_zoo):
    for name, paths in micro_zoo.paths.items():
        assert (paths.base / "model.safetensors").is_file(), name
        assert (paths.base / "tokenizer.json").is_file(), name
        for task in micro_zoo.config.expert_tasks:
            assert (paths.experts_full[task] / "model.safetensors").is_file()
            assert (paths.experts_lora[task] / "adapter_model.safetensors").is_file()


def test_reload_gives_identical_weights(micro_zoo):
    name = micro_zoo.model_names[0]
    first = micro_zoo.load_base(name).state_dict()
    again = AutoModelForCausalLM.from_pretrained(str(micro_zoo.paths[name].base)).state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    adapter = micro_zoo.load_lora_expert(name, micro_zoo.config.expert_tasks[0])
    assert isinstance(adapter, PeftModel)


def test_second_build_reuses_cache_without_training(micro_zoo, micro_preset, monkeypatch):
    import bench.zoo.build as build
    import bench.zoo.recipes as recipes

    def refuse(*args, **kwargs):
        raise AssertionError("a cached zoo must not train again")

    monkeypatch.setattr(recipes, "train", refuse)
    again = build.build_zoo(micro_preset.zoo, micro_zoo.root)
    assert again.paths == micro_zoo.paths
    assert again.hash == micro_zoo.hash


def test_changing_expert_recipe_keeps_the_base(micro_zoo, micro_preset, monkeypatch):
    import bench.zoo.build as build
    import bench.zoo.recipes as recipes

    trained: list[str] = []
    original = recipes.train_with_bar

    def record(model, data, settings, label):
        trained.append(label)
        return original(model, data, settings, label)

    monkeypatch.setattr(recipes, "train_with_bar", record)
    monkeypatch.setenv("LOCKBENCH_ZOO_PROCESSES", "1")  # train in this process, where `record` watches
    changed = micro_preset.zoo.model_copy(
        update={"expert_training": micro_preset.zoo.expert_training.model_copy(update={"steps": 3})})
    rebuilt = build.build_zoo(changed, micro_zoo.root)
    assert not any("base" in label for label in trained)
    assert any("expert" in label for label in trained)
    name = micro_zoo.model_names[0]
    assert rebuilt.paths[name].base == micro_zoo.paths[name].base
    task = micro_preset.zoo.expert_tasks[0]
    assert rebuilt.paths[name].experts_full[task] != micro_zoo.paths[name].experts_full[task]



def test_the_zoo_trains_experts_only_for_the_merge_track(micro_zoo, micro_preset, tmp_path, monkeypatch):
    """A grid that keeps a model off the merge track (`merge_models`, as `default` does GPT-2-style) uses
    none of its experts: the zoo trains only its base, and asking for one of its experts says why."""
    for kind in ("base", "experts", "lora"):  # the micro zoo's files, without GPT-2-style's experts
        for folder in (micro_zoo.root / "zoo" / kind).iterdir():
            if kind == "base" or folder.name.startswith("llama-"):
                shutil.copytree(folder, tmp_path / "zoo" / kind / folder.name)

    def refuse(*args, **kwargs):
        raise AssertionError("the experts of a model off the merge track must not train")

    monkeypatch.setattr(bench.zoo.recipes, "train", refuse)
    grid = micro_preset.grid.model_copy(update={"merge_models": ["llama"]})
    assert grid.expert_models == ["llama"]
    zoo = bench.zoo.build.build_zoo(micro_preset.zoo, tmp_path, expert_models=grid.expert_models)
    assert zoo.expert_models == ["llama"]
    task = micro_preset.zoo.expert_tasks[0]
    assert zoo.load_expert("llama", task) is not None
    assert not [path for kind in ("experts", "lora") for path in (tmp_path / "zoo" / kind).glob("gpt2-*")]
    for load in (zoo.load_expert, zoo.load_lora_expert):
        with pytest.raises(ValueError, match="merge_models"):
            load("gpt2", task)
    no_merges = micro_preset.grid.model_copy(update={"merge_attacks": []})
    assert no_merges.expert_models == [] and micro_preset.grid.expert_models is None


def test_the_longer_trained_experts_queue_first():
    """The build pool takes a model's experts longest-training first (each is seeded alike in any order)."""
    from bench.presets import load_preset

    ci = load_preset("ci").zoo
    labels = bench.zoo.build.expert_artefacts(ci, "llama")  # LoRA 300 steps, full 200
    assert sorted(labels) == sorted(f"{form}:{task}" for form in ("full", "lora") for task in ci.expert_tasks)
    assert [label.split(":")[0] for label in labels] == ["lora"] * 3 + ["full"] * 3
    assert [label.split(":")[1] for label in labels[:3]] == list(ci.expert_tasks)  # stable within a form

_TRAIN_SCRIPT = """
import dataclasses, hashlib, sys
import torch
from bench.presets import load_preset
from bench.zoo.architectures import build_model
from bench.zoo.recipes import task_data, train_settings, train_with_bar
from bench.zoo.tokenizer import build_tokenizer

zoo = load_preset("ci").zoo
recipe = zoo.recipe("gpt2")
tokenizer = build_tokenizer()
special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
model = build_model(zoo.models["gpt2"].architecture, len(tokenizer), recipe.seed, special)
data = task_data(recipe, recipe.base_tasks, tokenizer, fractions=recipe.base_task_fractions)
train_with_bar(model, data, dataclasses.replace(train_settings(recipe.base_training, recipe.seed), steps=60), "t")
digest = hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
print(torch.get_num_threads(), torch.backends.cpu.get_cpu_capability(), digest)
"""


def test_zoo_training_does_not_depend_on_the_cores(tmp_path):
    """The same recipe gives the same weights whatever torch's thread count (bench.runtime.threads): without the
    pin, 60 steps of the ci GPT-2-style base already end bitwise different under 1 and 2 threads."""
    import os
    import subprocess
    import sys

    results = {}
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=300, check=True)
        results[threads] = done.stdout.split()[-3:]
    assert results["2"][0] == "2", results  # the pin is scoped: the process keeps its own setting
    assert results["1"][2] == results["2"][2], results


@pytest.mark.slow
def test_zoo_training_runs_on_the_pinned_cpu_path_and_the_pin_matters():
    """bench.runtime.numerics pins ATen's code path when lockbench is imported, even in a process that imported torch
    first and whose environment does not name it; the pinned path trains the same weights as an explicit
    `avx2`, and ATen's unvectorised path (`default`, another "machine") trains other ones, which is what the
    pin is for: an AVX-512 machine left to itself is such another machine."""
    import os
    import subprocess
    import sys

    def train(**extra: str) -> list[str]:
        env = {key: value for key, value in os.environ.items() if key != "ATEN_CPU_CAPABILITY"}
        done = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT], env={**env, "OMP_NUM_THREADS": "1", **extra},
                              capture_output=True, text=True, timeout=300, check=True)
        return done.stdout.split()[-3:]

    pinned, explicit, unvectorised = train(), train(ATEN_CPU_CAPABILITY="avx2"), train(ATEN_CPU_CAPABILITY="default")
    assert pinned[1] == "AVX2" and pinned == explicit, (pinned, explicit)
    assert unvectorised[1] == "DEFAULT" and unvectorised[2] != pinned[2], (unvectorised, pinned)


def test_none_retrains_through_the_zoos_code_path(micro_zoo, micro_preset):
    """`none` at job seed 0 is the zoo's own expert and base; the zoo's training functions at the zoo's
    seed reproduce them bitwise, so `none` at other seeds is the same code path with another seed only."""
    from bench.zoo.recipes import base_seed, expert_seed, train_base, train_full_expert, train_lora_expert

    name, task = "llama", micro_preset.zoo.expert_tasks[0]
    recipe = micro_preset.zoo.recipe(name)
    base, tokenizer = micro_zoo.load_base(name), micro_zoo.tokenizer(name)
    expert, _ = train_full_expert(recipe, name, base, tokenizer, task, expert_seed(recipe, task, adapter=False))
    stored = micro_zoo.load_expert(name, task).state_dict()
    assert all(torch.equal(tensor, stored[key]) for key, tensor in expert.state_dict().items())
    adapter, _ = train_lora_expert(recipe, name, base, tokenizer, task, expert_seed(recipe, task, adapter=True))
    stored = micro_zoo.load_lora_expert(name, task).state_dict()
    assert all(torch.equal(tensor, stored[key]) for key, tensor in adapter.state_dict().items())
    retrained, _, _ = train_base(recipe, name, recipe.models[name].architecture, base_seed(recipe))
    assert all(torch.equal(tensor, base.state_dict()[key]) for key, tensor in retrained.state_dict().items())
    other, _ = train_full_expert(recipe, name, base, tokenizer, task, expert_seed(recipe, task, False, job_seed=1))
    assert not all(torch.equal(tensor, stored_tensor) for tensor, stored_tensor in zip(
        other.state_dict().values(), micro_zoo.load_expert(name, task).state_dict().values(), strict=True))


@pytest.mark.slow
def test_models_built_in_parallel_processes_equal_the_one_by_one_build(micro_preset, tmp_path, monkeypatch):
    """bench.zoo.build: the micro zoo's two models trained in two processes give the same files (weights
    and all) as one after the other in this process."""
    import hashlib

    from bench.zoo.build import build_zoo

    def digests(root):
        return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted((root / "zoo").rglob("*.safetensors"))}

    monkeypatch.setenv("LOCKBENCH_ZOO_PROCESSES", "2")
    build_zoo(micro_preset.zoo, tmp_path / "parallel")
    monkeypatch.setenv("LOCKBENCH_ZOO_PROCESSES", "1")
    build_zoo(micro_preset.zoo, tmp_path / "serial")
    parallel, serial = digests(tmp_path / "parallel"), digests(tmp_path / "serial")
    assert len(parallel) == 2 * (1 + 2 * len(micro_preset.zoo.expert_tasks)) and parallel == serial
