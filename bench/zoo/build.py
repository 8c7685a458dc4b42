"""Build (or reuse) the zoo: a generalist base per architecture and one expert per task, each saved in
Hugging Face format with safetensors, full fine-tune and LoRA adapter alike.

Each artefact lives under a content hash of everything that determines its weights, so a second build
with the same config loads from disk, and changing the expert recipe never retrains the base.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

import bench
from bench.runtime.device import compute_device
from bench.runtime.numerics import numerics_stamp
from bench.runtime.storage import FAULT_ENV, cached_directory, content_hash, is_complete, write_json_atomic
from bench.zoo.config import ModelEntry, ZooConfig
from bench.zoo.recipes import base_seed, expert_seed, train_base, train_full_expert, train_lora_expert
from tasks import get_task

#: Bump when training code changes in a way that changes weights, so stale caches are not reused.
ZOO_FORMAT_VERSION = 4


@dataclass(frozen=True)
class ZooPaths:
    """Where one architecture's artefacts live."""

    base: Path
    experts_full: dict[str, Path]
    experts_lora: dict[str, Path]


class Zoo:
    """A built zoo: paths and loaders. Construct with :func:`build_zoo`."""

    def __init__(self, config: ZooConfig, root: Path, paths: dict[str, ZooPaths],
                 expert_models: list[str] | None = None):
        self.config, self.root, self.paths, self.hash = config, root, paths, zoo_hash(config)
        self.expert_models = list(paths) if expert_models is None else expert_models  # whose experts were built

    @property
    def model_names(self) -> list[str]:
        return list(self.paths)

    def family(self, model: str) -> str:
        """The architecture family (transformers' model_type) of a zoo model, read from its config."""

        return json.loads((self.paths[model].base / "config.json").read_text())["model_type"]

    def tokenizer(self, model: str) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.paths[model].base, self.config.models[model].trust_remote_code)

    def load_base(self, model: str) -> PreTrainedModel:
        return load_model(self.paths[model].base, self.config.models[model].trust_remote_code)

    def load_expert(self, model: str, task: str) -> PreTrainedModel:
        self._check_experts(model)
        return load_model(self.paths[model].experts_full[task], self.config.models[model].trust_remote_code)

    def load_lora_expert(self, model: str, task: str) -> PeftModel:
        self._check_experts(model)
        return PeftModel.from_pretrained(self.load_base(model), str(self.paths[model].experts_lora[task]))

    def _check_experts(self, model: str) -> None:
        if model not in self.expert_models:
            raise ValueError(f"zoo model '{model}' has no experts here: its preset's grid keeps it off the merge "
                             f"track (grid.merge_models: {self.expert_models}), so they were not trained")

    def load_expert_as(self, model: str, task: str, release_format: str) -> PreTrainedModel | PeftModel:
        """The public expert in a release format: full weights, or the LoRA adapter over the base."""
        return self.load_expert(model, task) if release_format == "full" else self.load_lora_expert(model, task)


def library_stamp() -> str:
    """The versions of the libraries that decide a trained model's weights and the CPU code path (bench.runtime.numerics):
    in every zoo cache key, so a zoo trained otherwise is never reused (GPT-2-style training differs between
    transformers 5.23.0 and 5.24.0), and the zoo hash in every published row names them."""

    return (f"torch {torch.__version__}; transformers {transformers.__version__}; peft {peft.__version__}; "
            f"{numerics_stamp()}")


def zoo_hash(config: ZooConfig) -> str:
    return content_hash("zoo", ZOO_FORMAT_VERSION, config, library_stamp(), *document_digests(config))


def document_digests(config: ZooConfig) -> list[list[list[str]]]:
    """[[(name, digest of its documents), …]] for a zoo with document tasks, else [] (keys of a zoo without them
    unchanged): a changed data file retrains what was trained on it."""

    if not config.document_tasks:
        return []
    return [[[name, get_task(name).digest] for name in sorted(config.document_tasks)]]  # type: ignore[attr-defined]


def load_model(path: Path | str, trust_remote_code: bool = False) -> PreTrainedModel:
    """Load weights through safetensors only (never pickle), in eval mode, without transformers' per-load bar
    (a run loads thousands of tiny models: the bars would bury the harness's own progress display)."""

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch.float32
    )
    return model.to(compute_device()).eval()


def load_tokenizer(path: Path | str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path, manifest: dict) -> None:

    hf_logging.disable_progress_bar()  # its "Writing model shards" bar, once per artefact, would fill a log
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    write_json_atomic(directory / "lockbench.json", manifest)


def _build_base(config: ZooConfig, name: str, entry: ModelEntry, scratch: Path) -> None:
    assert entry.architecture is not None
    started = time.perf_counter()
    model, tokenizer, losses = train_base(config, name, entry.architecture, base_seed(config))
    _save(model, tokenizer, scratch, {
        "kind": "base", "model": name, "architecture": entry.architecture, "tasks": config.base_tasks,
        "training": config.base_training, "seed": config.seed, "final_loss": losses[-1],
        "train_seconds": time.perf_counter() - started, "lockbench": bench.__version__,
    })


def _build_full_expert(config: ZooConfig, name: str, base: Path, task: str, scratch: Path) -> None:
    tokenizer = load_tokenizer(base)
    seed = expert_seed(config, task, adapter=False)
    started = time.perf_counter()
    model, losses = train_full_expert(config, name, load_model(base), tokenizer, task, seed)
    _save(model, tokenizer, scratch, {
        "kind": "expert_full", "model": name, "task": task, "training": config.expert_training,
        "seed": seed, "final_loss": losses[-1], "train_seconds": time.perf_counter() - started,
    })


def _build_lora_expert(config: ZooConfig, name: str, base: Path, task: str, scratch: Path) -> None:
    tokenizer = load_tokenizer(base)
    seed = expert_seed(config, task, adapter=True)
    started = time.perf_counter()
    peft_model, losses = train_lora_expert(config, name, load_model(base), tokenizer, task, seed)
    peft_model.save_pretrained(str(scratch), safe_serialization=True)
    write_json_atomic(scratch / "lockbench.json", {
        "kind": "expert_lora", "model": name, "task": task, "lora": config.lora, "seed": seed,
        "final_loss": losses[-1], "train_seconds": time.perf_counter() - started,
    })


#: How many zoo models train at once, each in its own process (default: one per CPU core, at most one per model).
ZOO_PROCESSES_ENV = "LOCKBENCH_ZOO_PROCESSES"


def build_zoo(config: ZooConfig, root: Path, models: list[str] | None = None,
              expert_models: list[str] | None = None) -> Zoo:
    """Train whatever is missing under `root/zoo/` and return the zoo (only `models`, when given: a grid
    on one architecture need not train the others; the experts of `expert_models` only, when given: they
    serve the merge track alone). Models that are missing train in parallel processes
    (`$LOCKBENCH_ZOO_PROCESSES`); each one's artefacts are seeded alike either way."""
    unknown = sorted((set(models or []) | set(expert_models or [])) - set(config.models))
    if unknown:
        raise ValueError(f"unknown zoo models {unknown}; the zoo has {sorted(config.models)}")
    names = [name for name in config.models if models is None or name in models]
    with_experts = [name for name in names if expert_models is None or name in expert_models]
    documents = document_digests(config)
    missing = [name for name in names if not all(
        is_complete(path) for path in _artefacts(model_paths(config, root, name, documents, build=False),
                                                 experts=name in with_experts)
        if root / "zoo" in path.parents)]  # not a user's own folders
    processes = min(len(missing), zoo_processes())
    if processes > 1:
        _build_in_processes(config, root, missing, processes, with_experts)
    return Zoo(config, root, {name: model_paths(config, root, name, documents,
                                                build=lambda label, n=name: label == BASE or n in with_experts)
                              for name in names}, with_experts)


def zoo_processes() -> int:
    value = os.environ.get(ZOO_PROCESSES_ENV, "").strip()
    return int(value) if value else len(os.sched_getaffinity(0))


def _artefacts(paths: ZooPaths, experts: bool = True) -> list[Path]:
    """The base, and the experts unless `experts` is False."""
    if not experts:
        return [paths.base]
    return [paths.base, *paths.experts_full.values(), *paths.experts_lora.values()]


BASE = "base"


def expert_artefacts(config: ZooConfig, name: str) -> list[str]:
    """Labels of the experts the zoo trains for `name`: `full:<task>` (unless given) and `lora:<task>`, the
    form with more training steps first, so that the pool's last artefact is a short one (measured on the ci
    zoo: the 300-step LoRA experts queued last left one core idle for 12 s at the end of the build)."""
    entry, recipe = config.models[name], config.recipe(name)
    labels = [label for task in recipe.expert_tasks
              for label in ((f"full:{task}",) if task not in entry.expert_paths else ()) + (f"lora:{task}",)]
    steps = {"full": recipe.expert_training.steps, "lora": recipe.lora.training.steps}
    return sorted(labels, key=lambda label: -steps[label.split(":")[0]])


def _build_in_processes(config: ZooConfig, root: Path, names: list[str], processes: int,
                        with_experts: list[str]) -> None:
    """Train artefact by artefact in a pool of (spawned) processes, each model's experts as soon as its base
    is saved (a process per model left a core idle while the larger model trained on); each artefact is
    seeded alike either way. A fault point that fires in one (bench.runtime.storage) kills the whole run, as a
    machine crash would; any other death is an error naming the model."""
    context = multiprocessing.get_context("spawn")
    config_json = config.model_dump_json()
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        pending = {pool.submit(build_artefact, config_json, str(root), name, BASE): (name, BASE) for name in names}
        while pending:
            future = next(as_completed(pending))
            name, label = pending.pop(future)
            try:
                future.result()
            except BrokenProcessPool as error:
                if os.environ.get(FAULT_ENV):
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"the process building zoo model '{name}' died: {error}") from error
            if label == BASE and name in with_experts:
                pending.update({pool.submit(build_artefact, config_json, str(root), name, expert): (name, expert)
                                for expert in expert_artefacts(config, name)})


def build_artefact(config_json: str, root: str, name: str, label: str) -> None:
    """A build process's work: one artefact of model `name` (`base`, `full:<task>` or `lora:<task>`)."""
    config = ZooConfig.model_validate_json(config_json)
    model_paths(config, Path(root), name, document_digests(config), build=lambda artefact: artefact == label)


def model_paths(zoo_config: ZooConfig, root: Path, name: str, documents: list,
                build: bool | Callable[[str], bool] = True) -> ZooPaths:
    """Where model `name`'s artefacts live, training each that is missing (unless `build` is False, or says
    False for its label: `base`, `full:<task>`, `lora:<task>`)."""

    def cached(target: Path, make, label: str) -> Path:
        wanted = build(label) if callable(build) else build
        return cached_directory(target, make) if wanted else target

    entry = zoo_config.models[name]
    config = zoo_config.recipe(name)
    if entry.pretrained is not None:
        base, base_id = Path(entry.pretrained), entry.pretrained
    else:
        base_key = content_hash("base", ZOO_FORMAT_VERSION, library_stamp(), entry.architecture, config.base_tasks,
                                config.base_task_fractions, config.base_training, config.seed, config.split_sizes,
                                *documents)
        base = cached(root / "zoo" / "base" / f"{name}-{base_key}",
                      lambda scratch, n=name, e=entry, c=config: _build_base(c, n, e, scratch), BASE)
        base_id = base_key
    full: dict[str, Path] = {}
    lora: dict[str, Path] = {}
    for task in config.expert_tasks:
        if task in entry.expert_paths:
            full[task] = Path(entry.expert_paths[task])
        else:
            key = content_hash("expert", ZOO_FORMAT_VERSION, library_stamp(), base_id, task, config.expert_training,
                               config.seed, config.split_sizes, config.expert_tasks, *documents)
            full[task] = cached(root / "zoo" / "experts" / f"{name}-{task}-{key}",
                                lambda scratch, n=name, t=task, b=base, c=config: _build_full_expert(c, n, b, t, scratch),
                                f"full:{task}")
        key = content_hash("lora", ZOO_FORMAT_VERSION, library_stamp(), base_id, task, config.lora, config.seed,
                           config.split_sizes, config.expert_tasks, *documents)
        lora[task] = cached(root / "zoo" / "lora" / f"{name}-{task}-{key}",
                            lambda scratch, n=name, t=task, b=base, c=config: _build_lora_expert(c, n, b, t, scratch),
                            f"lora:{task}")
    return ZooPaths(base=base, experts_full=full, experts_lora=lora)
