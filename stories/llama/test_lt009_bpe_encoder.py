"""LT-009 byte-level BPE encoder: text -> ids for GGUF vocabularies with `tokenizer.ggml.model = gpt2`,
split by the pre-tokenizer that `tokenizer.ggml.pre` names, special tokens matched first.

Oracles: llama.cpp's own expected tokenizations (ggml-vocab-*.gguf.inp/.out), and transformers'
tokenizer built from the SmolLM2 GGUF (with SmolLM2's published digit-splitting pre-tokenizer) on
hypothesis-generated text and the hand-picked hard corpus. Qwen2 is LT-018."""
from __future__ import annotations

import pytest
from hypothesis import given

from fixtures.text_strategies import any_text, mixed_text
from fixtures.tokenizer_data import hard_corpus
from fixtures.tokenizer_oracles import smollm2_published
from fixtures.tokenizer_testing import (
    CONFORMANCE,
    PROPERTY,
    describe_mismatches,
    need_smollm2,
    smollm2_tokenizer,
    vocab_test_cases,
    vocab_tokenizer,
)

pytestmark = pytest.mark.story("LT-009")


@pytest.mark.parametrize("name, pre", [("gpt-2", "gpt-2"), ("llama-bpe", "llama-bpe"),
                                       ("starcoder", "starcoder"), ("refact", "refact")])
def test_llama_cpp_test_vectors_all_match(name, pre):
    tok = vocab_tokenizer(name)
    assert tok.kind == "bpe" and tok.pre == pre
    cases = vocab_test_cases(name)
    # As llama.cpp's test-tokenizer-0: no BOS/EOS, special-token text left as text.
    rows = [(c.text, ids, c.ids) for c in cases
            if (ids := tok.encode(c.text, add_special=False, parse_special=False)) != c.ids]
    assert len(cases) == 46
    assert not rows, describe_mismatches(rows)


@pytest.fixture(scope="module")
def smollm2_pair():
    path = need_smollm2()
    return smollm2_tokenizer(), smollm2_published(path)


def _ref_ids(ref, text):
    return ref.encode(text, add_special_tokens=False, split_special_tokens=True)


def test_smollm2_matches_transformers_on_the_hard_corpus(smollm2_pair):
    ours, ref = smollm2_pair
    cases = hard_corpus()
    rows = [(cid, a, b) for cid, text in cases
            if (a := ours.encode(text, add_special=False, parse_special=False)) != (b := _ref_ids(ref, text))]
    assert len(cases) >= 200
    assert not rows, describe_mismatches(rows)


@CONFORMANCE
@given(text=mixed_text)
def test_smollm2_matches_transformers_on_generated_mixed_text(smollm2_pair, text):
    ours, ref = smollm2_pair
    assert ours.encode(text, add_special=False, parse_special=False) == _ref_ids(ref, text)


@CONFORMANCE
@given(text=any_text)
def test_smollm2_matches_transformers_on_arbitrary_unicode(smollm2_pair, text):
    ours, ref = smollm2_pair
    assert ours.encode(text, add_special=False, parse_special=False) == _ref_ids(ref, text)


def test_control_tokens_in_text_become_single_tokens(smollm2_pair):
    ours, ref = smollm2_pair
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    ids = ours.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False)
    assert ids.count(ours.vocab.tokens.index("<|im_start|>")) == 2
    # With parse_special off, the same text is tokenized as plain characters.
    plain = ours.encode(text, parse_special=False)
    assert ours.vocab.tokens.index("<|im_start|>") not in plain
    assert plain == _ref_ids(ref, text)


def test_special_tokens_are_matched_longest_first():
    tok = vocab_tokenizer("starcoder")
    names = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<|endoftext|>"]
    ids = [tok.vocab.tokens.index(n) for n in names]
    text = "".join(names) + "def f(): pass" + names[3]
    out = tok.encode(text)
    assert out[:4] == ids and out[-1] == ids[3]
    assert tok.decode(out, skip_special=False) == text


@PROPERTY
@given(text=mixed_text)
def test_chunked_encoding_equals_one_engine_call(text):
    """Encoding caches safe chunks; the ids must equal the BPE engine run on the whole text."""
    tok = vocab_tokenizer("qwen2")
    assert tok.encode(text, add_special=False, parse_special=False) == tok._bpe.encode_whole(text)
