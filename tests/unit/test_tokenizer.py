"""The character tokenizer must round-trip any lm-eval prompt, in memory and through save/load."""

from __future__ import annotations

import string

from transformers import AutoTokenizer

from bench.zoo.tokenizer import build_tokenizer


def test_round_trip_every_printable_character():
    tokenizer = build_tokenizer()
    text = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c") + "\nadd 12+34=46\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text), "one token per character"
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_round_trip_after_save_and_reload(tmp_path):
    build_tokenizer().save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "rev abc=cba\n  spaces  kept"
    assert reloaded.decode(reloaded(text, add_special_tokens=False)["input_ids"]) == text
    assert reloaded.pad_token_id == build_tokenizer().pad_token_id


def test_unknown_character_maps_to_unk():
    tokenizer = build_tokenizer()
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]
