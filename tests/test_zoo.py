"""Zoo build, content-addressed cache reuse, and reload through Hugging Face loaders."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

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

    def refuse(*args, **kwargs):
        raise AssertionError("a cached zoo must not train again")

    monkeypatch.setattr(build, "train", refuse)
    again = build.build_zoo(micro_preset.zoo, micro_zoo.root)
    assert again.paths == micro_zoo.paths
    assert again.hash == micro_zoo.hash


def test_changing_expert_recipe_keeps_the_base(micro_zoo, micro_preset, monkeypatch):
    import bench.zoo.build as build

    trained: list[str] = []
    original = build._train_with_bar

    def record(model, data, settings, label):
        trained.append(label)
        return original(model, data, settings, label)

    monkeypatch.setattr(build, "_train_with_bar", record)
    changed = micro_preset.zoo.model_copy(
        update={"expert_training": micro_preset.zoo.expert_training.model_copy(update={"steps": 3})})
    rebuilt = build.build_zoo(changed, micro_zoo.root)
    assert not any("base" in label for label in trained)
    assert any("expert" in label for label in trained)
    name = micro_zoo.model_names[0]
    assert rebuilt.paths[name].base == micro_zoo.paths[name].base
    task = micro_preset.zoo.expert_tasks[0]
    assert rebuilt.paths[name].experts_full[task] != micro_zoo.paths[name].experts_full[task]
