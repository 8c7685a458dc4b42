"""Distill-then-merge (DESIGN §4, "Distillation"): re-learn the release's behaviour as a fresh update on the
public base, then merge that student instead of the release.

A trap that lives in the release's exact weights does not survive being re-learned. Trap² shapes ΔW so
that W0 + s·ΔW fails for s ≠ 1; re-parameterising defenses (PaRaMS, Merge-Lock) move the release out of
the base's basin without changing its function. Both protect the *weights*, while the attacker only
needs the *function*: the release's next-token distributions on prompts of the protected task. The
student is trained from the base by plain gradient descent on those distributions, so its update is an
ordinary one (no trap was optimised into it, and it sits in the base's basin), and merging it is the
unprotected case again. The student is then merged through mergekit exactly as `adaptive_coefficient`
merges a release (the same search, with the student as the release member).

No labels are used. The teacher (the release, adapters folded) answers each `attacker_train` prompt by
greedy decoding up to the newline that ends every answer; the loss is KL(teacher ‖ student) over the
positions that predict those answer tokens (or, with `positions="all"`, every token of prompt + answer).
The student is a fresh peft LoRA of the zoo's shape for an adapter release and a full copy of the base
otherwise. It trains with dropout off, so a teacher equal to the base (the harness's release-free control,
DESIGN §5) gives KL 0, no gradient and a student equal to the base: the control is this same attack
learning nothing, and its steps are skipped (`same_weights`) rather than run for a result known in advance.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from peft import PeftModel, get_peft_model
from pydantic import Field
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from attacks.adaptive_coefficient import AdaptiveCoefficient, AdaptiveCoefficientConfig
from attacks.common import Objective, objective_examples
from bench.config import StrictModel
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.runtime.device import device_of
from bench.toolkit.evaluate import as_plain_model
from bench.zoo.recipes import lora_config_for
from bench.zoo.training import ANSWER_END

Positions = Literal["answer", "all"]


class DistillSettings(StrictModel):
    """How a student re-learns its teachers (shared by `distill_merge` and `multi_distill`)."""

    steps: int = Field(150, ge=1, description="distillation steps: small beside the zoo experts' 200–400")
    lr: float = Field(1e-3, gt=0, description="learning rate of a full student (full release)")
    lora_lr: float = Field(5e-3, gt=0, description="learning rate of a LoRA student (adapter release)")
    batch_size: int = Field(32, ge=1, description="rows per step, shared evenly among the teachers")
    temperature: float = Field(1.0, gt=0, description="softens both distributions; the loss is scaled by T²")
    max_answer_tokens: int = Field(16, ge=1, description="cap of the teacher's greedy answer (procedural "
                                   "answers are 1–12 characters and a newline)")
    positions: Positions = Field("answer", description="KL at the positions predicting the teacher's answer, "
                                 "or at every position of prompt + answer")
    r: int = Field(8, ge=1, description="LoRA rank of an adapter student")
    alpha: int = Field(16, ge=1, description="LoRA alpha of an adapter student")


class DistillMergeConfig(DistillSettings, AdaptiveCoefficientConfig):
    """The distillation's knobs; the merge's (method, coefficients, patience, densities, normalize,
    objective) are adaptive_coefficient's own fields, validated by its validators."""

    objective: Objective = Field("all", description="the merge search maximises the protected task together "
                                 "with the members' (the merge track's goal)")

    def merge_config(self) -> AdaptiveCoefficientConfig:
        """The adaptive_coefficient configuration that merges the student."""
        return AdaptiveCoefficientConfig(**{name: getattr(self, name) for name in AdaptiveCoefficientConfig.model_fields})


@dataclass
class DistillData:
    """Right-padded prompt + teacher answer; `scored[i, t]` marks the positions whose next-token
    distribution the student must match."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    scored: torch.Tensor
    answer_tokens: int

    def rows(self, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The selected rows cut to their longest real length (padding costs compute, nothing else)."""
        width = int(self.attention_mask[rows].sum(dim=1).max())
        return (self.input_ids[rows, :width].to(device), self.attention_mask[rows, :width].to(device),
                self.scored[rows, :width].to(device))


def max_positions(model: PreTrainedModel) -> int | None:
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Every token whose text contains the answer's end, so a BPE token that fuses the newline with other
    characters still ends the answer (the zoo's character tokenizer has exactly one)."""
    texts = tokenizer.batch_decode([[index] for index in range(len(tokenizer))])
    return torch.tensor([index for index, text in enumerate(texts) if ANSWER_END in text], dtype=torch.long)


def until_stop(tokens: Sequence[int], stops: Collection[int]) -> list[int]:
    """The answer: tokens up to and including the first stop token (all of them when none stops)."""
    answer: list[int] = []
    for token in tokens:
        answer.append(token)
        if token in stops:
            break
    return answer


@torch.no_grad()
def greedy_answers(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                   max_new: int, batch_size: int = 256) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt (as the zoo tokenises it) and of the teacher's greedy answer, ending at,
    and including, the newline.

    transformers' own greedy decoding with its KV cache (5× faster here than re-running the prefix each
    step): prompts are left-padded by hand, positions follow the attention mask, and each row stops at
    its first stop token. Prompts are batched by length, so that no short prompt's room to answer is cut
    by a long neighbour's near the model's context limit.
    """
    stops = stop_ids(tokenizer).tolist()
    if not stops:
        raise ValueError(f"the tokenizer has no token containing the answer's end {ANSWER_END!r}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device, limit = device_of(teacher), max_positions(teacher)
    prompt_rows = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    if any(not row for row in prompt_rows):
        raise ValueError("an empty prompt has no position to answer from")
    order = sorted(range(len(prompt_rows)), key=lambda index: len(prompt_rows[index]))
    answers: dict[int, list[int]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(prompt_rows[index]) for index in chunk)
        new = min(max_new, limit - width) if limit else max_new
        if new < 1:
            raise ValueError(f"a prompt of {width} tokens leaves no room for an answer within {limit} positions")
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            tokens = prompt_rows[index]
            ids[row, width - len(tokens):] = torch.tensor(tokens)
            mask[row, width - len(tokens):] = 1
        settings = GenerationConfig(max_new_tokens=new, do_sample=False, num_beams=1, eos_token_id=stops,
                                    pad_token_id=pad)
        generated = teacher.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     generation_config=settings)
        for index, tokens in zip(chunk, generated[:, width:].tolist(), strict=True):
            answers[index] = until_stop(tokens, stops)
    return prompt_rows, [answers[index] for index in range(len(prompt_rows))]


def distill_data(prompt_rows: Sequence[list[int]], answers: Sequence[list[int]], positions: Positions,
                 pad: int) -> DistillData:
    """Pack prompt + answer rows; position t is scored when the token at t + 1 belongs to the answer
    (or, for "all", to the text at all)."""
    rows = [prompt + answer for prompt, answer in zip(prompt_rows, answers, strict=True)]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.bool)
    for index, (prompt, row) in enumerate(zip(prompt_rows, rows, strict=True)):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
        first = len(prompt) - 1 if positions == "answer" else 0
        scored[index, first: len(row) - 1] = True
    return DistillData(ids, mask, scored, sum(len(answer) for answer in answers))


class _TeacherKL(torch.autograd.Function):
    """Σ over positions of KL(teacher ‖ student) with its gradient written out: ∂/∂student = (q − p)/T.

    Autograd's own backward through log_softmax leaves a residue of the order of Σp − 1 (float rounding)
    where the student equals the teacher, and Adam, which normalises every gradient, turns such a
    residue into steps of the full learning rate (measured: a GPT-2 student of a base teacher drifted by
    0.03 in 30 steps). Here p and q come from the same kernel, so equal logits give exactly zero: a base
    teacher, the release-free control, moves nothing.
    """

    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
                ) -> torch.Tensor:
        student_log = torch.log_softmax(student_logits.float() / temperature, dim=-1)
        teacher_log = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
        teacher_p = teacher_log.exp()
        ctx.save_for_backward(student_log.exp(), teacher_p)
        ctx.temperature, ctx.dtype = temperature, student_logits.dtype
        return (teacher_p * (teacher_log - student_log)).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        student_p, teacher_p = ctx.saved_tensors
        return (grad * (student_p - teacher_p) / ctx.temperature).to(ctx.dtype), None, None


def kl_sum(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Σ over positions (rows) of KL(teacher ‖ student) at `temperature`; differentiable in the student."""
    return _TeacherKL.apply(student_logits, teacher_logits.detach(), temperature)


def scored_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor
                  ) -> torch.Tensor:
    """(scored positions × vocabulary) logits of `model` on the batch, on the batch's device."""
    device = device_of(model)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return logits[scored.to(device)].to(ids.device)


@torch.no_grad()
def mean_kl(teacher: torch.nn.Module, student: torch.nn.Module, data: DistillData, batch_size: int = 128) -> float:
    """KL(teacher ‖ student) per scored position over the whole distillation set, at temperature 1."""
    total, count, device = 0.0, 0, device_of(student)
    for start in range(0, data.input_ids.shape[0], batch_size):
        ids, mask, scored = data.rows(torch.arange(start, min(start + batch_size, data.input_ids.shape[0])), device)
        total += float(kl_sum(scored_logits(teacher, ids, mask, scored), scored_logits(student, ids, mask, scored)))
        count += int(scored.sum())
    return total / max(1, count)


def fresh_student(base: PreTrainedModel, adapter: bool, r: int, alpha: int, seed: int) -> PreTrainedModel | PeftModel:
    """A copy of the base, with a fresh LoRA of the zoo's shape for an adapter release (B = 0: no update yet)."""

    torch.manual_seed(seed)  # peft draws A at random
    student = copy.deepcopy(base)
    return get_peft_model(student, lora_config_for(student, r, alpha, 0.0)) if adapter else student


def cosine_factor(step: int, steps: int) -> float:
    """The zoo's schedule without warm-up: cosine from 1 down to 0.1 of the learning rate."""
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))


def distill(student: torch.nn.Module, teachers: Sequence[tuple[torch.nn.Module, DistillData]], steps: int, lr: float,
            batch_size: int, temperature: float, seed: int) -> list[float]:
    """AdamW (no weight decay, which would move a student whose teacher is the base) on T²·KL per scored
    position, summed over the teachers, each on its own rows (`batch_size` shared evenly) drawn with one
    seeded generator; the student stays in eval mode (no dropout) so that it is compared with each teacher's
    deterministic function. Returns the loss of every step."""
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: cosine_factor(step, steps))
    generator = torch.Generator().manual_seed(seed)
    device, losses = device_of(student), []
    share = max(1, batch_size // len(teachers))
    student.eval()
    for _ in range(steps):
        total: torch.Tensor | None = None
        for teacher, data in teachers:
            count = data.input_ids.shape[0]
            rows = torch.randint(0, count, (min(share, count),), generator=generator)
            ids, mask, scored = data.rows(rows, device)
            with torch.no_grad():
                target = scored_logits(teacher, ids, mask, scored)
            loss = kl_sum(target, scored_logits(student, ids, mask, scored), temperature) * temperature ** 2
            loss = loss / max(1, int(scored.sum()))
            total = loss if total is None else total + loss
        assert total is not None, "distillation needs a teacher"
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        schedule.step()
        losses.append(total.item())
    return losses


def teacher_data(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 settings: DistillSettings) -> DistillData:
    """The teacher's greedy answers to `prompts`, packed with them for distillation (no labels used)."""
    prompt_rows, answers = greedy_answers(teacher, tokenizer, prompts, settings.max_answer_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return distill_data(prompt_rows, answers, settings.positions, pad)


def same_weights(teacher: torch.nn.Module, base: torch.nn.Module) -> bool:
    """Whether the teacher is the base bit for bit (the harness's release-free control). The student starts as
    the base (a LoRA's B is zero), so every KL term and its gradient is exactly zero and AdamW without weight
    decay moves nothing: the distillation's result is known without its steps."""
    mine, theirs = teacher.state_dict(), base.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)


@contextmanager
def in_eval_mode(*models: torch.nn.Module) -> Iterator[None]:
    """Teachers answer and are compared in eval mode (no dropout), and are handed back in the mode they came in."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


def folded(student: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The student as a plain model of the base's architecture (a LoRA student folded in)."""
    plain = student.merge_and_unload() if isinstance(student, PeftModel) else student
    return plain.eval()


@register_attack(track="merge", family="data")
class DistillMerge(Attack[DistillMergeConfig]):
    name = "distill_merge"
    description = ("distils the release's next-token distributions on the attacker's prompts into a fresh "
                   "update on the base (no labels), then merges the student with adaptive_coefficient's search")

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        teacher = as_plain_model(view.release)
        with in_eval_mode(teacher):
            data = teacher_data(teacher, view.tokenizer, view.attacker_train.prompts, config)
            adapter = view.release_format == "adapter"
            lr = config.lora_lr if adapter else config.lr
            student = fresh_student(view.base, adapter, config.r, config.alpha, view.seed)
            initial_kl = mean_kl(teacher, student, data)
            if same_weights(teacher, view.base):  # the release-free control: KL 0, no gradient, nothing to learn
                losses = [0.0] * config.steps
            else:
                losses = distill(student, [(teacher, data)], config.steps, lr, config.batch_size, config.temperature,
                                 view.seed)
            final_kl = mean_kl(teacher, student, data)
        plain = folded(student)
        merged = AdaptiveCoefficient(config.merge_config()).run(
            dataclasses.replace(view, release=plain, release_format="full"))
        knobs = {**merged.knobs, "student": "lora" if adapter else "full", "distill_steps": config.steps,
                 "distill_lr": lr, "distill_examples": data.input_ids.shape[0], "distill_batch_size": config.batch_size,
                 "distill_temperature": config.temperature, "distill_positions": config.positions,
                 "distill_answer_tokens": data.answer_tokens, "initial_kl": initial_kl, "final_kl": final_kl,
                 "final_loss": losses[-1], "val_examples": objective_examples(view, config.objective)}
        if adapter:
            knobs.update(distill_r=config.r, distill_alpha=config.alpha)
        return AttackOutput(models=merged.models, knobs=knobs, steps=config.steps, examples=data.input_ids.shape[0])
