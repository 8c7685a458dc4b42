"""Reliability (issue 8): weights load only through safetensors, never a pickle or a model folder's custom
code unless its zoo entry asks."""

from __future__ import annotations

import ast
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fault_plugins  # noqa: F401  (registers the fault plugins this module's runs name)
import pytest
import torch
import yaml
from reliability_runs import (
    REPO,
    Booby,
    pretrained_dir,
    rel_data,
    tiny_safetensors,
    zoo_copy,
)

#: plumbing, not accuracy: scored by the double (tests/fakes), in-process and in subprocesses (reliability_runs.env)
pytestmark = pytest.mark.usefixtures("fake_scoring")


def _calls(tree: ast.AST) -> Iterator[tuple[ast.Call, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call: ast.Call, name: str) -> Any:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else "<expr>"
    return None


def test_weights_load_only_through_safetensors_and_no_remote_code_by_default() -> None:
    """Static: in every shipped module, torch.load passes weights_only=True, pickle is never used to load,
    model classes load with use_safetensors=True, and trust_remote_code is never literally True."""
    problems, checked = [], 0
    for package in ("bench", "attacks", "defenses", "tasks"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for call, name in _calls(tree):
                where = f"{path.relative_to(REPO)}:{call.lineno} {name}"
                if name == "torch.load" and _keyword(call, "weights_only") is not True:
                    problems.append(f"{where} without weights_only=True")
                if name.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") and name.endswith(("load", "loads")):
                    problems.append(f"{where}: unpickling")
                if _keyword(call, "trust_remote_code") is True:
                    problems.append(f"{where}: trust_remote_code=True")
                if _keyword(call, "use_safetensors") is False:
                    problems.append(f"{where}: use_safetensors=False")
                if name.endswith(".from_pretrained") and name.split(".")[0].startswith("AutoModel"):
                    checked += 1
                    if _keyword(call, "use_safetensors") is not True:
                        problems.append(f"{where} without use_safetensors=True")
    assert not problems, problems
    assert checked >= 1, "expected at least the zoo's model loader"


def test_pickle_and_custom_code_folders_are_refused_without_running_them(tmp_path: Path) -> None:
    """Runtime: the zoo's loader (what every stage uses) refuses a pickle-only folder and a custom-code
    folder with trust_remote_code off, and neither the pickle nor the code runs."""
    from bench.zoo.build import load_model

    marker = tmp_path / "PWNED"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                     "hidden_size": 8, "intermediate_size": 16,
                                                     "num_attention_heads": 2, "num_hidden_layers": 1,
                                                     "num_key_value_heads": 2, "vocab_size": 32}))
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(Booby(marker)))
    with pytest.raises(OSError, match="model.safetensors"):
        load_model(pickled)
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "rel_evil",
                                                    "auto_map": {"AutoConfig": "evil.EvilConfig",
                                                                 "AutoModelForCausalLM": "evil.Evil"}}))
    (custom / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (custom / "model.safetensors").write_bytes(tiny_safetensors())
    with pytest.raises(ValueError, match="custom code"):
        load_model(custom)
    assert not marker.exists()
    pickle.loads((pickled / "pytorch_model.bin").read_bytes())  # control: the trap does fire when unpickled
    assert marker.exists()


def test_custom_code_is_allowed_only_when_the_zoo_entry_asks(micro_preset: Any, tmp_path: Path) -> None:
    from bench.config import ConfigError
    from bench.harness.run import check_zoo_inputs
    from bench.presets import Preset

    args = pretrained_dir("custom-code")(micro_preset, tmp_path)
    data = yaml.safe_load(Path(args[1]).read_text())
    with pytest.raises(ConfigError, match="trust_remote_code"):
        check_zoo_inputs(Preset.model_validate(data))
    data["zoo"]["models"]["llama"]["trust_remote_code"] = True
    check_zoo_inputs(Preset.model_validate(data))  # the user asked for it: the folder passes the pre-flight
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_a_run_loads_models_only_with_safe_options(micro_preset: Any, reference: tuple[Path, Path],
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runtime: every model, adapter and tokenizer load of a whole run (all stages recomputed) uses
    safetensors and leaves trust_remote_code off, and torch.load is never called without weights_only."""
    import peft
    import transformers

    from bench.presets import Preset
    from bench.report.leaderboard import run_and_write

    seen: list[tuple[str, dict[str, Any]]] = []

    def spy(owner: Any, name: str) -> None:
        original = getattr(owner, name)
        function = original.__func__ if hasattr(original, "__func__") else original

        def wrapper(cls: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((f"{getattr(cls, '__name__', cls)}.{name}", kwargs))
            return function(cls, *args, **kwargs)
        monkeypatch.setattr(owner, name, classmethod(wrapper))

    spy(transformers.AutoModelForCausalLM, "from_pretrained")
    spy(transformers.AutoTokenizer, "from_pretrained")
    spy(peft.PeftModel, "from_pretrained")
    original_load = torch.load

    def guarded_load(*args: Any, **kwargs: Any) -> Any:
        seen.append(("torch.load", kwargs))
        return original_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", guarded_load)

    preset = Preset.model_validate(rel_data(micro_preset))
    summary = run_and_write(preset, zoo_copy(reference[0], tmp_path / "root"), tmp_path / "out")
    assert summary.failed == 0
    models = [kwargs for name, kwargs in seen if name.startswith("AutoModelForCausalLM")]
    assert models and all(kwargs.get("use_safetensors") is True for kwargs in models), models
    assert all(not kwargs.get("trust_remote_code") for _, kwargs in seen), seen
    assert all(kwargs.get("weights_only", True) is True for name, kwargs in seen if name == "torch.load")
    assert any(name.startswith("PeftModel") for name, _ in seen), "the adapter release was loaded"
