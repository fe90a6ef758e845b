"""GT-031 UTF-8 streaming safety: the tokenizer.json backend (the GPT-OSS path) streams generated
tokens as whole UTF-8 characters and never as broken text.

Acceptance (tokenizer.json files converted from tiktoken ranks - cl100k_base and Qwen's ranks -
by transformers' TikTokenConverter, the construction GPT-OSS's o200k_harmony tokenizer.json
comes from; o200k's ranks are not available offline; tiktoken itself is the oracle):
- for any text: encode, then push the ids one at a time; every emitted piece is valid UTF-8
  (no lone surrogates), the text emitted so far is always a prefix of the final text (no part of
  a character ever comes out), and the joined pieces equal tiktoken's decode of the whole id list;
- for arbitrary id sequences (which may form invalid UTF-8): U+FFFD appears exactly where
  Python's bytes.decode("utf-8", errors="replace") of tiktoken's token bytes puts it, and equal to
  HF tokenizers' own decode (Rust's from_utf8_lossy); a character comes out with the token that
  completes it, and an invalid byte as soon as it is known to be invalid (one exception, from
  CPython's incremental decoder: ED A0..BF, the start of an encoded surrogate, waits for one
  more byte; the final text is the same).
LT-011 covers the GGUF backends and raw byte splits; this module is about the tokenizer.json
backend against tiktoken."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFLibraryTokenizer

from fixtures.text_strategies import any_text, mixed_text
from fixtures.tokenizer_oracles import tiktoken_tokenizer_json
from fixtures.tokenizer_testing import CONFORMANCE, PROPERTY, tiktoken_json_pair

pytestmark = pytest.mark.story("GT-031")

CL100K_RANKS = 100256          # ordinary tokens 0..100255; the converted file numbers specials after them


@pytest.fixture(scope="module")
def cl100k():
    ours, enc = tiktoken_json_pair("cl100k")
    return ours, enc, HFLibraryTokenizer.from_file(str(tiktoken_tokenizer_json("cl100k")))


@pytest.fixture(scope="module")
def qwen():
    return tiktoken_json_pair("qwen")


def stream_pieces(tok, ids) -> tuple[list[str], list[str]]:
    """(piece returned by each push, text emitted after each push); flush() appended to pieces."""
    dec, pieces, so_far, emitted = tok.stream_decoder(), [], [], ""
    for i in ids:
        piece = dec.push(i)
        pieces.append(piece)
        emitted += piece
        so_far.append(emitted)
    pieces.append(dec.flush())
    return pieces, so_far


def assert_valid_utf8(pieces):
    for piece in pieces:
        piece.encode("utf-8")  # strict: a lone surrogate (half a character) raises here


def assert_text_streams_safely(tok, enc, text):
    ids = tok.encode(text, add_special=False, parse_special=False)
    assert ids == enc.encode_ordinary(text), "precondition: same ids as tiktoken"
    pieces, so_far = stream_pieces(tok, ids)
    assert_valid_utf8(pieces)
    for emitted in so_far:
        assert text.startswith(emitted), f"emitted {emitted!r} is not a prefix of {text!r}"
    assert "".join(pieces) == enc.decode(ids) == text


@CONFORMANCE
@given(text=any_text)
def test_cl100k_any_text_streams_whole_characters_equal_to_tiktoken(cl100k, text):
    tok, enc, _ = cl100k
    assert_text_streams_safely(tok, enc, text)


@CONFORMANCE
@given(text=mixed_text)
def test_cl100k_mixed_script_text_streams_whole_characters_equal_to_tiktoken(cl100k, text):
    tok, enc, _ = cl100k
    assert_text_streams_safely(tok, enc, text)


@PROPERTY
@given(text=mixed_text)
def test_qwen_ranks_mixed_script_text_streams_whole_characters_equal_to_tiktoken(qwen, text):
    tok, enc = qwen
    assert_text_streams_safely(tok, enc, text)


def _single_byte_ids(enc) -> list[int]:
    return [enc.encode_single_token(bytes([b])) for b in range(256)]


@pytest.fixture(scope="module")
def cl100k_partial_ids(cl100k):
    """Ordinary cl100k tokens whose bytes are not whole UTF-8 text (bytes of split characters)."""
    _, enc, _ = cl100k
    partial = []
    for i in range(CL100K_RANKS):
        try:
            enc.decode_single_token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            partial.append(i)
    assert len(partial) > 256, "cl100k has many tokens that are parts of characters"
    return partial


def id_sequences(byte_ids, partial_ids):
    # Mostly tokens that are single bytes or parts of characters, so that invalid, truncated and
    # valid multi-byte sequences all occur; some whole-text tokens in between.
    one = st.one_of(st.sampled_from(byte_ids), st.sampled_from(partial_ids),
                    st.integers(min_value=0, max_value=CL100K_RANKS - 1))
    return st.lists(one, max_size=40)


@PROPERTY
@given(data=st.data())
def test_arbitrary_ids_give_replacement_characters_exactly_where_python_does(cl100k, cl100k_partial_ids, data):
    tok, enc, library = cl100k
    ids = data.draw(id_sequences(_single_byte_ids(enc), cl100k_partial_ids), label="ids")
    raw = b"".join(enc.decode_single_token_bytes(i) for i in ids)
    expected = raw.decode("utf-8", errors="replace")
    pieces, so_far = stream_pieces(tok, ids)
    assert_valid_utf8(pieces)
    assert "".join(pieces) == expected
    assert enc.decode(ids) == expected == library.decode(ids, skip_special_tokens=False)
    # Timeliness: after k tokens the decoder has emitted what the bytes so far decode to, less
    # what the held-back bytes (at most 3) decode to now: one U+FFFD for an unfinished character,
    # or two for ED A0..BF (the start of an encoded surrogate), which CPython's incremental
    # decoder holds until the next byte although it can never become a character.
    for k, emitted in enumerate(so_far, start=1):
        now = b"".join(enc.decode_single_token_bytes(i) for i in ids[:k]).decode("utf-8", errors="replace")
        assert expected.startswith(emitted)
        assert now.startswith(emitted) and now[len(emitted):] in ("", "\ufffd", "\ufffd\ufffd"), (ids[:k], emitted, now)


@PROPERTY
@given(data=st.data())
def test_tokens_that_split_a_character_emit_nothing_until_it_is_complete(cl100k, data):
    """A character cut into its single-byte tokens: nothing comes out until its last byte."""
    tok, enc, _ = cl100k
    ch = data.draw(st.characters(min_codepoint=0x80, exclude_categories=["Cs"]), label="character")
    ids = [enc.encode_single_token(bytes([b])) for b in ch.encode("utf-8")]
    pieces, _ = stream_pieces(tok, ids)
    assert pieces == [""] * (len(ids) - 1) + [ch, ""]
    assert enc.decode(ids) == ch
