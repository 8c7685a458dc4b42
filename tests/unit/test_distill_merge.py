"""Distill-then-merge (attacks/distill_merge.py) on tiny random Llama- and GPT-2-style models (no zoo, no
lm-eval): the teacher's greedy answers, the exact KL gradient, the KL falling, a base teacher leaving
the student at the base (the release-free control), and the attack end to end and deterministic."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from fakes import perturbed, tiny_model
from peft import PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from attacks.adaptive_coefficient import AdaptiveCoefficientConfig
from attacks.distill_merge import (
    DistillMerge,
    DistillMergeConfig,
    distill,
    distill_data,
    fresh_student,
    greedy_answers,
    kl_sum,
    mean_kl,
    same_weights,
)
from bench.plugins import PublicView, TaskData
from bench.toolkit.evaluate import as_plain_model
from bench.zoo.recipes import lora_config_for
from bench.zoo.tokenizer import build_tokenizer

TOKENIZER = build_tokenizer()
NEWLINE = TOKENIZER("\n", add_special_tokens=False)["input_ids"][0]
FAMILIES = ["llama", "gpt2"]


def _tiny(family: str, seed: int = 0) -> PreTrainedModel:
    return tiny_model(family, len(TOKENIZER), seed)


def _perturbed(model: PreTrainedModel, seed: int, scale: float = 0.1) -> PreTrainedModel:
    return perturbed(model, seed, scale)


def _lora(base: PreTrainedModel, seed: int, scale: float = 0.0) -> PeftModel:
    """A LoRA of the zoo's shape; B = 0 (scale 0) is the release-free control's zero update."""
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), lora_config_for(base, 8, 16, 0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def _release(base: PreTrainedModel, adapter: bool, seed: int) -> PreTrainedModel | PeftModel:
    return _lora(base, seed, scale=0.5) if adapter else _perturbed(base, seed)


def _prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"sort: {''.join(rng.choice('abcdef') for _ in range(rng.randint(2, 6)))}=" for _ in range(count)]


def _data(teacher: PreTrainedModel, count: int = 48, positions: str = "answer"):
    prompt_rows, answers = greedy_answers(teacher, TOKENIZER, _prompts(count), max_new=8)
    return distill_data(prompt_rows, answers, positions, TOKENIZER.pad_token_id)  # type: ignore[arg-type]


def _states_equal(first: PreTrainedModel, second: PreTrainedModel) -> bool:
    one, two = first.state_dict(), second.state_dict()
    return set(one) == set(two) and all(torch.equal(one[name], two[name]) for name in one)


# --- the pieces -------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_written_out_gradient_is_the_kl_gradient(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 7, generator=generator, dtype=torch.float64)
    kl_sum(teacher, student, temperature).backward()
    reference = student.detach().clone().requires_grad_(True)
    p = torch.softmax(teacher / temperature, -1)
    expected = (p * (p.log() - torch.log_softmax(reference / temperature, -1))).sum()
    expected.backward()
    torch.testing.assert_close(kl_sum(teacher, student.detach(), temperature).double(), expected.detach(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(student.grad, reference.grad, rtol=1e-5, atol=1e-7)


def test_equal_logits_give_exactly_zero_gradient() -> None:
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = kl_sum(logits.detach().clone(), logits)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logits.grad) == 0


def _reference_greedy(model: PreTrainedModel, prompt: str, max_new: int) -> list[int]:
    """Greedy decoding at its plainest: one prompt, the whole prefix re-run for every token, no cache."""
    prefix, answer = TOKENIZER(prompt, add_special_tokens=False)["input_ids"], []
    with torch.no_grad():
        while len(answer) < max_new and NEWLINE not in answer:
            answer.append(int(model(input_ids=torch.tensor([prefix + answer])).logits[0, -1].argmax()))
    return answer


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_answers_are_plain_greedy_decoding(family: str) -> None:
    """Left padding, the KV cache and batching by length change nothing, and the prompts come back in order."""
    teacher = _perturbed(_tiny(family), 1)
    prompts = _prompts(7)
    rows, answers = greedy_answers(teacher, TOKENIZER, prompts, max_new=5, batch_size=3)
    assert answers == [_reference_greedy(teacher, prompt, 5) for prompt in prompts]
    assert rows == [TOKENIZER(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]


def _bigram(next_of: dict[str, str]) -> GPT2LMHeadModel:
    """A GPT-2 whose next token is a fixed function of the last one (a newline where `next_of` is silent):
    an embedding dimension per named token and one for all others, no positions, blocks that write
    nothing, and a head centred per row so that the final LayerNorm's shift cancels."""
    named = sorted(next_of)
    width = len(named) + 1  # the last dimension stands for every other token
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(TOKENIZER), n_embd=width, n_layer=1, n_head=1, n_inner=4,
                                       n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)).eval()
    embedding, head = torch.zeros(len(TOKENIZER), width), torch.zeros(len(TOKENIZER), width)
    embedding[:, -1] = 1.0
    head[NEWLINE, -1] = 1.0
    for dimension, token in enumerate(named):
        index = TOKENIZER.convert_tokens_to_ids(token)
        embedding[index] = torch.nn.functional.one_hot(torch.tensor(dimension), width).float()
        head[TOKENIZER.convert_tokens_to_ids(next_of[token]), dimension] = 1.0
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.transformer.wte.weight.copy_(embedding)
        model.transformer.ln_f.weight.fill_(1.0)
        model.lm_head.weight.copy_(head - head.mean(dim=1, keepdim=True))
    return model


def test_each_answer_ends_at_its_own_newline_or_at_the_cap() -> None:
    model = _bigram({"a": "x", "x": "y", "y": "\n", "b": "y", "c": "c"})
    rows, answers = greedy_answers(model, TOKENIZER, ["ca", "b", "ac", "d"], max_new=3, batch_size=4)
    x, y, c = (TOKENIZER.convert_tokens_to_ids(token) for token in "xyc")
    assert answers == [[x, y, NEWLINE], [y, NEWLINE], [c, c, c], [NEWLINE]]
    data = distill_data(rows, answers, "answer", 0)
    # "ca" + "xy\n": positions 1, 2, 3 predict the answer; "d" + "\n": only position 0
    assert [data.scored[row].nonzero().flatten().tolist() for row in range(4)] == [[1, 2, 3], [0, 1], [1, 2, 3], [0]]
    assert data.answer_tokens == 9
    assert distill_data(rows, answers, "all", 0).scored[0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert greedy_answers(model, TOKENIZER, ["c" * 62], max_new=8)[1] == [[c, c]]  # the context ends at 64
    with pytest.raises(ValueError, match="no room"):
        greedy_answers(model, TOKENIZER, ["c" * 64], max_new=8)


# --- distillation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_kl_to_the_teacher_falls(family: str, adapter: bool) -> None:
    """The student ends closer to the teacher than the base (its starting point) was."""
    base = _tiny(family)
    teacher = as_plain_model(_release(base, adapter, seed=3)).eval()
    data = _data(teacher)
    student = fresh_student(base, adapter, 8, 16, seed=0)
    before = mean_kl(teacher, student, data)
    losses = distill(student, [(teacher, data)], steps=40, lr=5e-3, batch_size=16, temperature=1.0, seed=0)
    after = mean_kl(teacher, student, data)
    assert before > 1e-3 and after < 0.5 * before, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert _states_equal(base, _tiny(family))  # the base itself is untouched


@pytest.mark.parametrize("family", FAMILIES)
def test_two_teachers_are_learned_together(family: str) -> None:
    """multi_distill's mechanism: one student moves toward both teachers, each on its own rows, and ends
    closer to each than the base was; the KL to one alone is what one teacher's distillation reaches."""
    base = _tiny(family)
    first, second = (as_plain_model(_release(base, False, seed=seed)).eval() for seed in (3, 4))
    data = [(first, _data(first)), (second, _data(second, count=40))]
    student = fresh_student(base, False, 8, 16, seed=0)
    before = [mean_kl(teacher, student, rows) for teacher, rows in data]
    distill(student, data, steps=60, lr=5e-3, batch_size=16, temperature=1.0, seed=0)
    after = [mean_kl(teacher, student, rows) for teacher, rows in data]
    assert all(b > 1e-3 and a < 0.7 * b for a, b in zip(after, before, strict=True)), (before, after)


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_base_teacher_leaves_the_student_at_the_base(family: str, adapter: bool) -> None:
    """The release-free control (the base, or a zero LoRA, as the release): KL 0, no step moves anything."""
    base = _tiny(family)
    release = _lora(base, seed=5) if adapter else copy.deepcopy(base)
    teacher = as_plain_model(release).eval()
    data = _data(teacher)
    student = fresh_student(base, adapter, 8, 16, seed=0)
    assert mean_kl(teacher, student, data) == 0.0
    losses = distill(student, [(teacher, data)], steps=20, lr=5e-3, batch_size=16, temperature=1.0, seed=0)
    assert losses == [0.0] * 20
    plain = student.merge_and_unload() if isinstance(student, PeftModel) else student
    assert _states_equal(plain, base)


# --- the attack -------------------------------------------------------------------------------------


class _Scorer:
    """view.score_val stand-in: a scripted score per call (the search then prefers the second coefficient)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, model: PreTrainedModel, tasks: list[str]) -> dict[str, float]:
        self.calls.append(list(tasks))
        return dict.fromkeys(tasks, [0.2, 0.6, 0.4, 0.3, 0.1][min(len(self.calls) - 1, 4)])


def _view(base: PreTrainedModel, adapter: bool, seed: int = 0, release: PreTrainedModel | PeftModel | None = None
          ) -> PublicView:
    def data(count: int) -> TaskData:
        prompts = _prompts(count, seed=count)
        return TaskData(prompts, ["x"] * count)  # the answers are never read

    expert = _lora(base, seed=9, scale=0.5) if adapter else _perturbed(base, 9)
    return PublicView(track="merge", release_format="adapter" if adapter else "full", model_name="tiny",
                      release=release if release is not None else _release(base, adapter, seed=3), base=base,
                      tokenizer=TOKENIZER, task="p", attacker_train=data(24), attacker_val=data(8),
                      public_experts={"m": expert}, public_experts_val={"m": data(6)}, seed=seed,
                      score_val=_Scorer())


SMALL = {"steps": 6, "max_answer_tokens": 6, "coefficients": [0.5, 1.0, 2.0], "densities": [0.5]}


@pytest.mark.parametrize("method", ["dare_ties", "ties", "task_arithmetic"])
@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_attack_end_to_end(family: str, adapter: bool, method: str) -> None:
    base = _tiny(family)
    view = _view(base, adapter)
    config = DistillMergeConfig.model_validate({**SMALL, "method": method})
    output = DistillMerge(config).run(view)
    merged = output.models[1.0]
    assert list(output.models) == [1.0] and type(merged) is type(base) and not isinstance(merged, PeftModel)
    assert set(merged.state_dict()) == set(base.state_dict())
    knobs = output.knobs
    assert knobs["method"] == method and knobs["seed"] == 0 and knobs["objective"] == "all"
    assert knobs["student"] == ("lora" if adapter else "full")
    assert knobs["distill_steps"] == 6 and knobs["distill_examples"] == 24
    assert knobs["distill_lr"] == (5e-3 if adapter else 1e-3)
    assert 0 <= knobs["final_kl"] < knobs["initial_kl"]
    assert knobs["weights"] == 1.0 and knobs["val_score"] == 0.6  # the scripted search's peak
    assert knobs["val_examples"] == 8 + 6
    assert output.steps == 6 and output.examples == 24 and output.stages == {}
    assert view.score_val.calls[0] == ["p", "m"]  # type: ignore[union-attr]
    assert DistillMerge.family == "data" and DistillMerge.track == "merge"


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_attack_with_a_base_release_distils_nothing_and_skips_its_steps(adapter: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The control cell: the student is the base, so the merge is the release-free control's, and the steps
    whose result is known (test_a_base_teacher_leaves_the_student_at_the_base) are not run."""
    import attacks.distill_merge as module

    base = _tiny("llama")
    release = _lora(base, seed=5, scale=0.0) if adapter else copy.deepcopy(base)
    ran: list[int] = []
    real = module.distill
    monkeypatch.setattr(module, "distill", lambda *args, **kwargs: ran.append(1) or real(*args, **kwargs))
    output = DistillMerge(DistillMergeConfig.model_validate(SMALL)).run(_view(base, adapter, release=release))
    assert output.knobs["initial_kl"] == 0.0 and output.knobs["final_kl"] == 0.0 and output.knobs["final_loss"] == 0.0
    assert ran == []
    DistillMerge(DistillMergeConfig.model_validate(SMALL)).run(_view(base, adapter))  # a real release distils
    assert ran == [1]


def test_same_weights_tells_the_base_from_any_other_teacher() -> None:
    base = _tiny("gpt2")
    assert same_weights(copy.deepcopy(base), base)
    assert same_weights(as_plain_model(_lora(base, seed=5, scale=0.0)), base)
    assert not same_weights(_perturbed(base, 9), base)


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_attack_is_deterministic_for_a_seed(adapter: bool) -> None:
    base = _tiny("gpt2")
    config = DistillMergeConfig.model_validate(SMALL)
    first = DistillMerge(config).run(_view(base, adapter, seed=1))
    second = DistillMerge(config).run(_view(base, adapter, seed=1))
    assert _states_equal(first.models[1.0], second.models[1.0])
    assert first.knobs["final_kl"] == second.knobs["final_kl"]
    other = DistillMerge(config).run(_view(base, adapter, seed=2))
    assert not _states_equal(first.models[1.0], other.models[1.0])


def test_config_defaults_and_the_merge_fields_of_adaptive_coefficient() -> None:
    config = DistillMergeConfig()
    assert (config.steps, config.lr, config.lora_lr, config.batch_size, config.r, config.alpha) == (
        150, 1e-3, 5e-3, 32, 8, 16)
    merge = config.merge_config()
    assert isinstance(merge, AdaptiveCoefficientConfig) and merge.objective == "all"
    assert merge.method == AdaptiveCoefficientConfig().method
    assert DistillMergeConfig(method="ties").merge_config().method == "ties"
    with pytest.raises(ValueError, match="no per-member 'weight'"):
        DistillMergeConfig(method="slerp")
    with pytest.raises(ValueError, match="ascending"):
        DistillMergeConfig(coefficients=[2.0, 1.0])
    with pytest.raises(ValueError):
        DistillMergeConfig(stepz=3)
