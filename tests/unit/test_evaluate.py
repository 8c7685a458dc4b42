"""lm-eval's accuracy must equal an independent computation on the same examples."""

from __future__ import annotations

import pytest
import torch

from bench.results.examples import decode, encode
from bench.toolkit.evaluate import score, score_examples
from bench.zoo.architectures import ArchitectureConfig, build_model
from bench.zoo.tokenizer import build_tokenizer
from bench.zoo.training import TrainSettings, tokenise, train
from tasks import SplitSizes, build_splits, materialize

pytestmark = pytest.mark.slow
TASKS = ["first", "copy"]
SIZES = SplitSizes(owner_train=400, attacker_train=20, attacker_val=20, test=60)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained just enough to get some, not all, test examples right."""
    tokenizer = build_tokenizer()
    special = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id}
    model = build_model(ArchitectureConfig(family="llama", hidden_size=32, num_layers=1, num_heads=2,
                                           intermediate_size=64), len(tokenizer), 0, special)
    prompts, answers = [], []
    for task in TASKS:
        split = build_splits(task, 0, SIZES)["owner_train"]
        prompts += split["prompt"]
        answers += split["answer"]
    train(model, tokenise(tokenizer, prompts, answers), TrainSettings(steps=200, lr=3e-3, batch_size=32))
    materialized = materialize(TASKS, 0, SIZES, tmp_path_factory.mktemp("tasks"))
    return model.eval(), tokenizer, materialized


def direct_accuracy(model, tokenizer, task: str) -> float:
    """Greedy exact match of `answer + newline`, computed with one plain forward pass."""
    return int(direct_correct(model, tokenizer, task).sum()) / len(build_splits(task, 0, SIZES)["test"]["prompt"])


def direct_correct(model, tokenizer, task: str) -> torch.Tensor:
    """Per test example, in the split's order: greedy decoding emits exactly `answer + newline`."""
    test = build_splits(task, 0, SIZES)["test"]
    batch = tokenise(tokenizer, test["prompt"], test["answer"])
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    predicted = logits[:, :-1].argmax(-1)
    targets = batch.labels[:, 1:]
    return ((predicted == targets) | (targets == -100)).all(dim=1)


def test_lm_eval_loglikelihood_accuracy_equals_direct_computation(trained):
    model, tokenizer, materialized = trained
    scores = score(model, tokenizer, TASKS, materialized)
    direct = {task: direct_accuracy(model, tokenizer, task) for task in TASKS}
    assert scores == pytest.approx(direct, abs=1e-9)
    assert any(value > 0 for value in scores.values()), "the check is vacuous when every answer is wrong"


def test_generative_form_gives_the_same_accuracy(trained):
    model, tokenizer, materialized = trained
    loglikelihood = score(model, tokenizer, TASKS, materialized)
    generated = score(model, tokenizer, TASKS, materialized, form="gen")
    assert generated == pytest.approx(loglikelihood, abs=1e-9)


def test_per_example_values_are_the_examples_in_split_order(trained):
    """What a bootstrap over test examples resamples: lm-eval's per-sample values, in the split's order,
    equal the direct per-example check, their mean is the reported accuracy, and the stored code round-trips."""
    model, tokenizer, materialized = trained
    accuracies = score(model, tokenizer, TASKS, materialized)
    for task, result in score_examples(model, tokenizer, TASKS, materialized).items():
        direct = direct_correct(model, tokenizer, task).double().tolist()
        assert list(result.examples) == direct
        assert result.accuracy == accuracies[task] == pytest.approx(sum(direct) / len(direct))
        assert decode(encode(result.examples)).tolist() == direct
