"""GT-046 UTF-8 multibyte edge cases: the tokenizer.json backend (the GPT-OSS path) encodes,
decodes and streams the hard corners of UTF-8 exactly as tiktoken does.

Acceptance (cl100k_base and Qwen ranks converted to tokenizer.json by transformers'
TikTokenConverter; tiktoken, Python's UTF-8 codec, HF tokenizers and the Unicode Standard's own
example are the oracles):
- hand-picked texts - every UTF-8 length boundary, noncharacters, BOM, U+FFFD itself, emoji ZWJ,
  flag, keycap, tag and skin-tone sequences, stacked combining marks, decomposed Hangul,
  Indic conjuncts, RTL marks, CJK extension B, astral math letters, runs of one emoji - get
  tiktoken's ids, stream as whole characters and decode back to the text;
- text drawn only from multi-byte characters and emoji sequences (hypothesis) does the same;
- invalid byte sequences fed as byte tokens (lone continuation bytes, truncated, overlong,
  encoded surrogates, beyond U+10FFFF, bytes never used in UTF-8) give U+FFFD as Python and
  Rust's from_utf8_lossy give it, and as the Unicode Standard's Table 3-8 example spells out;
- a special token between the halves of a character, and a stream that ends inside a character."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFLibraryTokenizer

from fixtures.tokenizer_oracles import tiktoken_tokenizer_json
from fixtures.tokenizer_testing import PROPERTY, tiktoken_json_pair

pytestmark = pytest.mark.story("GT-046")

HARD_TEXTS = {
    "length-boundaries": "\x7f\x80\u07ff\u0800\uffef\U00010000\U0010ffff",
    "noncharacters": "\ufdd0\ufffe\uffff\U0001fffe\U0010fffe",
    "bom-first-and-inside": "\ufeffstart\ufeffmiddle",
    "replacement-char-in-text": "a\ufffdb\ufffd\ufffd",
    "nul-and-controls": "a\x00b\x01\x1f\x7f\x85",
    "zwj-family": "👩‍👩‍👧‍👦 family",
    "zwj-profession-skin-tone": "👩🏽‍🚀👨🏿‍⚕️",
    "flags": "🇺🇸🇯🇵🇩🇪",
    "tag-sequence-flag": "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "keycap": "1\ufe0f\u20e3#\ufe0f\u20e3",
    "variation-selectors": "☺\ufe0f☺\ufe0e❤️",
    "stacked-combining-marks": ("Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349"
                                "a\u0300\u0301\u0302\u0303"),
    "decomposed-hangul": "\u1100\u1161\u11a8\u1102\u1165",
    "precomposed-hangul": "한국어 텍스트",
    "devanagari-conjuncts": "क्षत्रिय श्री",
    "thai": "ภาษาไทยง่ายๆ",
    "arabic-harakat-and-rtl-marks": "\u200fمُحَمَّد\u200e abc",
    "cjk-extension-b": "𠀀𠀁𪚥𤭢",
    "astral-math-letters": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚",
    "halfwidth-fullwidth": "ｱｲｳｴｵ ＡＢＣ１２３",
    "emoji-run-no-spaces": "😀" * 17,
    "emoji-between-letters": "a😀b🎉c",
    "private-use": "\ue000\U000f0000\U00100000",
}


@pytest.fixture(scope="module", params=["cl100k", "qwen"])
def pair(request):
    return tiktoken_json_pair(request.param)


@pytest.fixture(scope="module")
def cl100k():
    ours, enc = tiktoken_json_pair("cl100k")
    return ours, enc, HFLibraryTokenizer.from_file(str(tiktoken_tokenizer_json("cl100k")))


def stream(tok, ids, skip_special: bool = True) -> tuple[list[str], list[str]]:
    """(pieces incl. the final flush, text emitted after each push)."""
    dec, pieces, so_far, emitted = tok.stream_decoder(skip_special=skip_special), [], [], ""
    for i in ids:
        pieces.append(dec.push(i))
        emitted += pieces[-1]
        so_far.append(emitted)
    pieces.append(dec.flush())
    return pieces, so_far


def assert_round_trip_in_whole_characters(tok, enc, text):
    ids = tok.encode(text, add_special=False, parse_special=False)
    assert ids == enc.encode_ordinary(text)
    pieces, so_far = stream(tok, ids)
    for piece in pieces:
        piece.encode("utf-8")
    for emitted in so_far:
        assert text.startswith(emitted), f"emitted {emitted!r} is not a prefix of {text!r}"
    assert "".join(pieces) == enc.decode(ids) == tok.decode(ids) == text
    return ids, pieces


@pytest.mark.parametrize("case", sorted(HARD_TEXTS))
def test_hard_text_matches_tiktoken_and_streams_whole_characters(pair, case):
    tok, enc = pair
    assert_round_trip_in_whole_characters(tok, enc, HARD_TEXTS[case])


def test_the_hard_texts_really_split_characters_across_tokens(pair):
    """The cases above are only edge cases if tokens do cut characters: check that they do."""
    tok, enc = pair
    split_cases = []
    for case, text in HARD_TEXTS.items():
        ids = tok.encode(text, add_special=False, parse_special=False)
        _, so_far = stream(tok, ids)
        if any(len(so_far[k]) == len(so_far[k - 1]) for k in range(1, len(so_far))):
            split_cases.append(case)
    assert len(split_cases) >= 5, split_cases


multibyte_char = st.characters(min_codepoint=0x80, exclude_categories=["Cs"])
emoji_sequence = st.builds(
    lambda base, tone, joins: base + tone + "".join("\u200d" + j for j in joins),
    st.sampled_from(["👩", "👨", "🧑", "👍", "🏃", "🤷"]),
    st.sampled_from(["", "🏻", "🏽", "🏿"]),
    st.lists(st.sampled_from(["🚀", "💻", "👧", "👦", "♀\ufe0f", "♂\ufe0f", "🔬"]), max_size=3))
multibyte_text = st.lists(st.one_of(st.text(alphabet=multibyte_char, min_size=1, max_size=6), emoji_sequence,
                                    st.sampled_from(["\u0301", "\u200d", "\ufe0f", " ", "\n"])),
                          max_size=16).map("".join)


@PROPERTY
@given(text=multibyte_text)
def test_multibyte_only_text_matches_tiktoken_and_streams_whole_characters(pair, text):
    tok, enc = pair
    assert_round_trip_in_whole_characters(tok, enc, text)


# -- invalid byte sequences --------------------------------------------------------------------

INVALID_BYTES = {
    "lone-continuation": b"a\x80b",
    "continuation-run": b"\x80\xbf\x80",
    "truncated-2-byte": b"\xc3",
    "truncated-3-byte": b"\xe2\x82",
    "truncated-4-byte": b"\xf0\x9f\x98",
    "truncated-then-ascii": b"\xf0\x9fA",
    "truncated-then-new-character": b"\xe2\x82\xe2\x82\xac",
    "overlong-slash-2-byte": b"\xc0\xaf",
    "overlong-slash-3-byte": b"\xe0\x80\xaf",
    "overlong-nul-4-byte": b"\xf0\x80\x80\x80",
    "encoded-surrogate": b"\xed\xa0\x80",
    "encoded-surrogate-pair": b"\xed\xa0\xbd\xed\xb8\x80",
    "beyond-u10ffff": b"\xf4\x90\x80\x80",
    "never-used-bytes": b"\xc0\xc1\xf5\xf8\xfc\xfe\xff",
    "valid-between-invalid": b"\xff\xe2\x82\xac\xff",
}
# The Unicode Standard (chapter 3, "U+FFFD Substitution of Maximal Subparts", Table 3-8):
# 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64 -> a FFFD FFFD FFFD b FFFD c FFFD FFFD d.
UNICODE_TABLE_3_8 = (bytes.fromhex("61F18080E180C262806380BF64"), "a\ufffd\ufffd\ufffdb\ufffdc\ufffd\ufffdd")


def byte_ids(enc, data: bytes) -> list[int]:
    return [enc.encode_single_token(bytes([b])) for b in data]


@pytest.mark.parametrize("case", sorted(INVALID_BYTES))
def test_invalid_sequences_as_byte_tokens_become_replacement_characters(cl100k, case):
    tok, enc, library = cl100k
    data = INVALID_BYTES[case]
    ids = byte_ids(enc, data)
    expected = data.decode("utf-8", errors="replace")
    assert "\ufffd" in expected
    pieces, _ = stream(tok, ids)
    for piece in pieces:
        piece.encode("utf-8")
    assert "".join(pieces) == expected == enc.decode(ids) == library.decode(ids)
    assert tok.decode(ids) == expected


def test_unicode_standard_table_3_8_example(cl100k):
    tok, enc, _ = cl100k
    data, expected = UNICODE_TABLE_3_8
    pieces, _ = stream(tok, byte_ids(enc, data))
    assert "".join(pieces) == expected
    assert data.decode("utf-8", errors="replace") == expected  # the oracle agrees with the standard


def test_invalid_bytes_inside_multibyte_tokens(cl100k):
    """Tokens that carry several bytes of a character, cut off by a token that cannot continue it."""
    tok, enc, _ = cl100k
    starts = [i for i in range(100256) if (b := enc.decode_single_token_bytes(i)) and len(b) >= 2
              and b[0] >= 0xE0 and _is_incomplete(b)][:20]
    assert starts, "cl100k has multi-byte tokens that end inside a character"
    for start in starts:
        ids = [start, enc.encode_single_token(b"x"), start, enc.encode_single_token(b"\x80")]
        expected = b"".join(enc.decode_single_token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        assert "".join(stream(tok, ids)[0]) == expected == enc.decode(ids)


def _is_incomplete(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data"


# -- special tokens and the end of the stream ---------------------------------------------------

def test_special_token_between_the_halves_of_a_character(cl100k):
    tok, enc, _ = cl100k
    special = tok.encode("<|endoftext|>", add_special=False)
    assert len(special) == 1 and tok.is_special(special[0])
    emoji = byte_ids(enc, "🎉".encode())
    ids = emoji[:2] + special + emoji[2:]
    # Skipped (the default for generated text): the special token does not break the character.
    assert "".join(stream(tok, ids)[0]) == "🎉" == enc.decode(emoji)
    # Kept: its text lands between the bytes, so the first half can never complete.
    kept = "".join(stream(tok, ids, skip_special=False)[0])
    assert kept == (b"\xf0\x9f" + b"<|endoftext|>" + b"\x8e\x89").decode("utf-8", errors="replace")
    assert kept == "\ufffd<|endoftext|>\ufffd\ufffd"


@pytest.mark.parametrize("text", ["👩‍👩‍👧‍👦", "你好", "e\u0301", "𠀀", "🇺🇸"])
def test_stream_ending_inside_a_character_flushes_one_replacement_character(cl100k, text):
    tok, enc, _ = cl100k
    data = text.encode("utf-8")
    ids = byte_ids(enc, data)[:-1]                 # the last byte never arrives
    pieces, so_far = stream(tok, ids)
    expected = data[:-1].decode("utf-8", errors="replace")
    assert "".join(pieces) == expected == enc.decode(ids)
    assert pieces[-1] == "\ufffd" and "\ufffd" not in so_far[-1]
