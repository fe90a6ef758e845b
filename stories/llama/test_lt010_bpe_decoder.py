"""LT-010 byte-level BPE decoder: ids -> text. Each token stands for raw bytes (the GPT-2 byte map
undone); decode joins them and reads UTF-8, broken sequences becoming U+FFFD; control tokens are
left out unless asked for. decode(encode(s)) == s wherever the vocabulary has every byte of s.

Oracles: tiktoken's bytes for every Qwen token, transformers' decode of SmolLM2 ids."""
from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fixtures.text_strategies import any_text, mixed_text
from fixtures.tokenizer_data import hard_corpus
from fixtures.tokenizer_oracles import qwen_tiktoken, transformers_from_gguf
from fixtures.tokenizer_testing import PROPERTY, need_qwen_ranks, need_smollm2, smollm2_tokenizer, vocab_tokenizer
from worker.errors import InvalidParamsError
from worker.tokenizer.byte_level import BYTE_TO_CHAR

pytestmark = pytest.mark.story("LT-010")


def test_every_qwen_token_stands_for_the_bytes_tiktoken_gives_it():
    need_qwen_ranks()
    tok, enc = vocab_tokenizer("qwen2"), qwen_tiktoken()
    wrong = [i for i in range(enc.n_vocab - len(enc._special_tokens))
             if tok.token_bytes(i) != enc.decode_single_token_bytes(i)]
    assert not wrong, f"{len(wrong)} tokens differ, first: {wrong[:10]}"


@PROPERTY
@given(text=any_text)
def test_qwen_round_trip_is_exact_for_any_text(text):
    # Qwen2's vocabulary holds all 256 bytes, so every string survives encode -> decode.
    tok = vocab_tokenizer("qwen2")
    assert tok.decode(tok.encode(text, parse_special=False)) == text


def _smollm2_can_spell(tok, text: str) -> bool:
    present = set(tok.vocab.tokens)
    return all(BYTE_TO_CHAR[b] in present for b in text.encode("utf-8"))


@PROPERTY
@given(text=mixed_text)
def test_smollm2_round_trip_where_the_vocabulary_has_the_bytes(text):
    tok = smollm2_tokenizer()
    assume(_smollm2_can_spell(tok, text))
    assert tok.decode(tok.encode(text, parse_special=False)) == text


def test_smollm2_vocabulary_lacks_21_bytes_which_are_dropped_as_transformers_drops_them():
    """SmolLM2's byte alphabet misses 21 byte values (e.g. 0x04, 0xF1, 0xF2): no round trip for
    text containing them; the bytes are dropped, as llama.cpp and transformers drop them."""
    path = need_smollm2()
    tok, ref = smollm2_tokenizer(), transformers_from_gguf("smollm2", str(path))
    present = set(tok.vocab.tokens)
    missing = [b for b in range(256) if BYTE_TO_CHAR[b] not in present]
    assert len(missing) == 21 and 0x04 in missing and 0xF1 in missing
    text = "a\x04b \U00040000c"  # U+40000 is written F1 80 80 80
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False)
    assert tok.decode(tok.encode(text)) != text


def test_hard_corpus_round_trips():
    qwen, smol = vocab_tokenizer("qwen2"), smollm2_tokenizer()
    failures = [cid for cid, text in hard_corpus() if qwen.decode(qwen.encode(text)) != text]
    failures += [cid for cid, text in hard_corpus()
                 if _smollm2_can_spell(smol, text) and smol.decode(smol.encode(text)) != text]
    assert not failures


@PROPERTY
@given(ids=st.lists(st.integers(min_value=0, max_value=49151), max_size=40), skip=st.booleans())
def test_decode_of_any_ids_matches_transformers(ids, skip):
    """Random id sequences (broken UTF-8 included) decode as transformers decodes them."""
    path = need_smollm2()
    tok, ref = smollm2_tokenizer(), transformers_from_gguf("smollm2", str(path))
    expected = ref.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    assert tok.decode(ids, skip_special=skip) == expected


def test_control_tokens_are_left_out_unless_asked_for():
    tok = smollm2_tokenizer()
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>")
    assert tok.decode(ids) == "user\nHi"
    assert tok.decode(ids, skip_special=False) == "<|im_start|>user\nHi<|im_end|>"
    assert tok.token_bytes(ids[0]) == b"<|im_start|>"


def test_byte_tokens_decode_to_their_bytes():
    tok = vocab_tokenizer("gpt-2")
    space, newline = tok.vocab.tokens.index("Ġ"), tok.vocab.tokens.index("Ċ")
    assert tok.token_bytes(space) == b" " and tok.token_bytes(newline) == b"\n"
    # Part of a 3-byte character alone is not text: U+FFFD, never a crash.
    ids = tok.encode("你")
    assert len(ids) == 2 and tok.decode(ids[:1]) == "\ufffd" and tok.decode(ids) == "你"


@pytest.mark.parametrize("bad", [-1, 49152, 10**9, "7", 1.5, None])
def test_ids_outside_the_vocabulary_are_refused(bad):
    tok = smollm2_tokenizer()
    with pytest.raises(InvalidParamsError) as info:
        tok.decode([1, bad])
    assert info.value.code == "INVALID_TOKEN_ID" and info.value.field == "ids"
