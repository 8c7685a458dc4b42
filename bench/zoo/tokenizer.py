"""A character-level tokenizer in Hugging Face format.

Every printable ASCII character and newline is one token, so any lm-eval prompt tokenizes and token
boundaries never depend on context (log-likelihoods of a continuation are exact).
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARACTERS = [c for c in string.printable if c in string.ascii_letters + string.digits + string.punctuation]
CHARACTERS += [" ", "\n"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The same tokenizer on every machine: the vocabulary is a fixed list, no training involved."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=256,
    )


def save_tokenizer(directory: Path) -> None:
    build_tokenizer().save_pretrained(directory)
