"""How each zoo artefact is trained: the base's skill mixture, the full and LoRA experts, their seeds and
the replay sample. Defenses and the harness's references re-train with these same functions (the `none`
reference at other seeds, Trap²'s and PMP's own experts and bases), so a protected release and the zoo
differ only in what the defense changes. Where the artefacts live and what is missing: bench.zoo.build.
"""

from __future__ import annotations

import copy
import sys
import time

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bench.runtime.threads import compute_threads
from bench.zoo.architectures import LORA_TARGETS, ArchitectureConfig, build_model
from bench.zoo.config import TrainingConfig, ZooConfig
from bench.zoo.tokenizer import build_tokenizer
from bench.zoo.training import TrainSettings, tokenise, train
from tasks import build_splits


def train_settings(training: TrainingConfig, seed: int) -> TrainSettings:
    return TrainSettings(steps=training.steps, lr=training.lr, batch_size=training.batch_size,
                         warmup_steps=training.warmup_steps, seed=seed)


def _owner_examples(config: ZooConfig, task_names: list[str], fractions: dict[str, float] | None = None
                    ) -> tuple[list[str], list[str]]:
    prompts: list[str] = []
    answers: list[str] = []
    for task in task_names:
        owner = build_splits(task, config.seed, config.split_sizes)["owner_train"]
        count = max(1, round((fractions or {}).get(task, 1.0) * len(owner)))
        prompts += owner["prompt"][:count]
        answers += owner["answer"][:count]
    return prompts, answers


def task_data(config: ZooConfig, task_names: list[str], tokenizer: PreTrainedTokenizerBase,
               replay_fraction: float = 0.0, seed: int = 0, fractions: dict[str, float] | None = None):
    """Owner-split examples of `task_names`, plus a replayed sample of the base's mixture.

    Loss is on answers only: prompts of procedural tasks are random strings, and fitting them would
    spend a tiny model's capacity on noise.
    """
    prompts, answers = _owner_examples(config, task_names, fractions)
    if replay_fraction > 0:
        replay_prompts, replay_answers = replay_sample(config, int(replay_fraction * len(prompts)), seed)
        prompts += replay_prompts
        answers += replay_answers
    return tokenise(tokenizer, prompts, answers)


def replay_sample(config: ZooConfig, count: int, seed: int) -> tuple[list[str], list[str]]:
    """The one replay sampler: `count` examples of the public skill mixture (each base task's owner examples
    at its share of the mixture), shuffled by `seed`. Experts replay it while training, and defenses get
    the same sample (OwnerView.replay), so they train on what the zoo's experts saw."""
    prompts, answers = _owner_examples(config, config.base_tasks, config.base_task_fractions)
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return [prompts[i] for i in order], [answers[i] for i in order]


def train_with_bar(model: torch.nn.Module, data, settings: TrainSettings, label: str) -> list[float]:
    """A bar on a terminal; sent to a file or a CI log, one plain line per training when it ends (a bar's
    redraws would fill the log with carriage returns)."""
    on_terminal, started = sys.stderr.isatty(), time.perf_counter()
    with tqdm(total=settings.steps, desc=label, leave=False, mininterval=1.0, disable=not on_terminal) as bar, \
            compute_threads():

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")

        losses = train(model, data, settings, on_step=on_step)
    if not on_terminal:
        print(f"zoo: {label} trained, {settings.steps} steps in {time.perf_counter() - started:.1f}s"
              f"{f', last loss {losses[-1]:.3f}' if losses else ''}", file=sys.stderr, flush=True)
    return losses


def base_seed(config: ZooConfig, job_seed: int = 0) -> int:
    """The seed of a base's initialisation and row order: the zoo's at job seed 0, another per job seed
    (the `none` reference re-trains its base per seed so that intervals include training variance)."""
    return config.seed + 1000 * job_seed


def expert_seed(config: ZooConfig, task: str, adapter: bool, job_seed: int = 0) -> int:
    """The seed of an expert's row order (and LoRA init): the zoo's at job seed 0, offset per job seed."""
    index = config.expert_tasks.index(task) if task in config.expert_tasks else 0
    return config.seed + (101 if adapter else 1) + index + 1000 * job_seed


def train_base(config: ZooConfig, name: str, architecture: ArchitectureConfig, seed: int
               ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[float]]:
    """Pre-train a generalist base from a random init on the zoo's skill mixture (the zoo's code path)."""
    tokenizer = build_tokenizer()
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    model = build_model(architecture, len(tokenizer), seed, special)
    data = task_data(config, config.base_tasks, tokenizer, fractions=config.base_task_fractions)
    losses = train_with_bar(model, data, train_settings(config.base_training, seed), f"{name} base")
    return model.eval(), tokenizer, losses


def train_full_expert(config: ZooConfig, name: str, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      task: str, seed: int) -> tuple[PreTrainedModel, list[float]]:
    """Fine-tune a copy of `base` on the owner split of `task` plus replay (the zoo's full expert)."""

    model = copy.deepcopy(base)
    data = task_data(config, [task], tokenizer, config.expert_training.replay_fraction, seed)
    losses = train_with_bar(model, data, train_settings(config.expert_training, seed), f"{name} expert {task}")
    return model.eval(), losses


def train_lora_expert(config: ZooConfig, name: str, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      task: str, seed: int) -> tuple[PeftModel, list[float]]:
    """A peft LoRA on a copy of `base`, trained as `train_full_expert` trains (the zoo's adapter expert)."""

    model = copy.deepcopy(base)
    lora = config.lora
    # peft draws A's initialisation from torch's global generator: seed it, or an adapter rebuilt alone
    # (after a kill or a damaged file) would differ from the one an uninterrupted build makes.
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config_for(model, lora.r, lora.alpha, lora.dropout))
    data = task_data(config, [task], tokenizer, lora.training.replay_fraction, seed)
    losses = train_with_bar(peft_model, data, train_settings(lora.training, seed), f"{name} lora {task}")
    return peft_model.eval(), losses


def lora_config_for(model: PreTrainedModel, r: int, alpha: int, dropout: float) -> LoraConfig:
    """LoRA on every attention and MLP linear map of a zoo family; hub models fall back to 'all-linear'."""
    family = model.config.model_type
    targets: list[str] | str = LORA_TARGETS.get(family, "all-linear")
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM",
        fan_in_fan_out=family == "gpt2",
    )
