"""GT-001 HF tokenizers integration: models that ship a tokenizer.json are tokenized by the HF
`tokenizers` library through our Tokenizer interface (encode / decode / token_bytes / streaming),
with nothing lost on the way: the ids and texts equal those of transformers using the same file.

The tokenizer.json here is the one transformers builds for SmolLM2 from its GGUF (vocabulary,
merges, 17 special tokens)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.text_strategies import mixed_text
from fixtures.tokenizer_data import hard_corpus
from fixtures.tokenizer_oracles import tokenizer_json_from_transformers, transformers_from_gguf
from fixtures.tokenizer_testing import CONFORMANCE, PROPERTY, describe_mismatches, need_smollm2
from worker.tokenizer import load_tokenizer
from worker.tokenizer.hf_json import HFJsonTokenizer

pytestmark = pytest.mark.story("GT-001")


@pytest.fixture(scope="module")
def pair():
    ref = transformers_from_gguf("smollm2", str(need_smollm2()))
    ours = load_tokenizer(tokenizer_json=tokenizer_json_from_transformers("smollm2", ref))
    return ours, ref


def test_the_tokenizer_json_backend_is_the_hf_library(pair):
    ours, _ = pair
    from tokenizers import Tokenizer as HFTokenizer

    assert isinstance(ours, HFJsonTokenizer) and ours.kind == "hf"
    assert isinstance(ours._engine, HFTokenizer)
    assert ours.vocab_size == 49152


def test_hard_corpus_ids_equal_transformers(pair):
    ours, ref = pair
    rows = [(cid, a, b) for cid, text in hard_corpus()
            if (a := ours.encode(text, add_special=False)) != (b := ref.encode(text, add_special_tokens=False))]
    assert not rows, describe_mismatches(rows)


@CONFORMANCE
@given(text=mixed_text)
def test_generated_text_ids_equal_transformers(pair, text):
    ours, ref = pair
    assert ours.encode(text, add_special=False) == ref.encode(text, add_special_tokens=False)
    assert ours.encode(text, add_special=False, parse_special=False) == ref.encode(
        text, add_special_tokens=False, split_special_tokens=True)


@PROPERTY
@given(ids=st.lists(st.integers(min_value=0, max_value=49151), max_size=40), skip=st.booleans())
def test_decode_equals_transformers(pair, ids, skip):
    ours, ref = pair
    assert ours.decode(ids, skip_special=skip) == ref.decode(ids, skip_special_tokens=skip,
                                                             clean_up_tokenization_spaces=False)


def test_chat_markup_goes_through_the_library_special_tokens(pair):
    ours, ref = pair
    text = "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    ids = ours.encode(text)
    assert ids == ref.encode(text, add_special_tokens=False)
    assert ids[0] == ref.convert_tokens_to_ids("<|im_start|>")
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids, skip_special=False) == text
