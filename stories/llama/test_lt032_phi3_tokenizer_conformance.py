"""LT-032 tokenizer conformance, Phi-3: our SentencePiece tokenizer built from llama.cpp's Phi-3
vocabulary (ggml-vocab-phi-3.gguf: scores, <0xNN> byte fallback, leading-space rule, BOS) gives
the same ids as

- llama.cpp's expected tokenizations for ggml-vocab-phi-3 and ggml-vocab-llama-spm (46 each), and
- transformers' tokenizer built from the same GGUF (its phi3 builder derives BPE merges from the
  scores: an independent construction), on hypothesis-generated text, whitespace runs across the
  16-space token boundary, and the hand-picked hard corpus.

Zero mismatches required; decode(encode(s)) == s."""
from __future__ import annotations

import pytest
from hypothesis import given

from fixtures.text_strategies import any_text, mixed_text
from fixtures.tokenizer_data import hard_corpus
from fixtures.tokenizer_oracles import transformers_from_gguf
from fixtures.tokenizer_testing import (
    CONFORMANCE,
    PROPERTY,
    describe_mismatches,
    need_vocab,
    vocab_test_cases,
    vocab_tokenizer,
)
from worker.tokenizer import TokenType

pytestmark = pytest.mark.story("LT-032")


@pytest.fixture(scope="module")
def phi3():
    path = need_vocab("phi-3")
    return vocab_tokenizer("phi-3"), transformers_from_gguf("phi-3", str(path))


def _ref(ref, text):
    return ref.encode(text, add_special_tokens=False, split_special_tokens=True)


@pytest.mark.parametrize("name", ["phi-3", "llama-spm"])
def test_llama_cpp_sentencepiece_vectors_all_match(name):
    tok = vocab_tokenizer(name)
    assert tok.kind == "spm"
    cases = vocab_test_cases(name)
    rows = [(c.text, ids, c.ids) for c in cases
            if (ids := tok.encode(c.text, add_special=False, parse_special=False)) != c.ids]
    assert len(cases) == 46
    assert not rows, describe_mismatches(rows)


def test_hard_corpus_matches_transformers(phi3):
    tok, ref = phi3
    rows = [(cid, a, b) for cid, text in hard_corpus()
            if (a := tok.encode(text, add_special=False, parse_special=False)) != (b := _ref(ref, text))]
    assert not rows, describe_mismatches(rows)


def test_whitespace_runs_across_the_longest_space_token_match_transformers(phi3):
    tok, ref = phi3
    texts = [pat.format(" " * n) for n in range(1, 50) for pat in ("{}", "a{}b", "{}x", "\n{}def f():", "x{}")]
    rows = [(t, a, b) for t in texts if (a := tok.encode(t, add_special=False)) != (b := _ref(ref, t))]
    assert not rows, describe_mismatches(rows)


@CONFORMANCE
@given(text=mixed_text)
def test_generated_mixed_text_matches_transformers(phi3, text):
    tok, ref = phi3
    assert tok.encode(text, add_special=False, parse_special=False) == _ref(ref, text)


@CONFORMANCE
@given(text=any_text)
def test_arbitrary_unicode_matches_transformers(phi3, text):
    tok, ref = phi3
    assert tok.encode(text, add_special=False, parse_special=False) == _ref(ref, text)


@PROPERTY
@given(text=any_text)
def test_round_trip(text):
    tok = vocab_tokenizer("phi-3")
    assert tok.decode(tok.encode(text, parse_special=False)) == text


def test_bos_and_leading_space(phi3):
    tok, ref = phi3
    ids = tok.encode("Hello world")
    assert ids == ref.encode("Hello world", add_special_tokens=True)
    assert ids[0] == tok.bos_id == 1
    assert tok.token_bytes(ids[1]) == b" Hello"  # the space SentencePiece puts in front
    assert tok.decode(ids) == "Hello world"


def test_characters_outside_the_vocabulary_fall_back_to_byte_tokens(phi3):
    tok, ref = phi3
    text = "𓀀"  # not a piece: written as its four UTF-8 bytes
    ids = tok.encode(text, add_special=False)
    byte_ids = ids[1:]
    assert ids == _ref(ref, text)
    assert all(tok.vocab.token_types[i] == TokenType.BYTE for i in byte_ids)
    assert b"".join(tok.token_bytes(i) for i in byte_ids) == text.encode("utf-8")


def test_chat_tokens_swallow_the_newline_after_them():
    """Phi-3's chat tokens carry rstrip (HF tokenizer.json; llama.cpp sets it by model name), so the
    template's newline after <|user|> / <|end|> / <|assistant|> is not tokenized."""
    tok = vocab_tokenizer("phi-3")
    user, end, assistant = (tok.vocab.tokens.index(t) for t in ("<|user|>", "<|end|>", "<|assistant|>"))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == "<s><|user|>\nHi<|end|>\n<|assistant|>\n"
    ids = tok.encode(prompt, add_special=False)
    hi = tok.encode("Hi", add_special=False)
    assert ids == [tok.bos_id, user, *hi, end, assistant]
