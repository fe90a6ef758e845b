"""LT-008 GGUF merges parsing: `tokenizer.ggml.merges` becomes the BPE merge table in file order
(rank = position), each entry split at its first space after position 0 as llama.cpp splits it.
Oracles: GGUFReader's merge strings, the merge table as HF tokenizers reports it back, and
transformers' own GGUF loader on words that exercise the merge order."""
from __future__ import annotations

import json

import pytest

from fixtures.tokenizer_data import vocab_metadata
from fixtures.tokenizer_oracles import smollm2_published
from fixtures.tokenizer_testing import need_smollm2, need_vocab, smollm2_tokenizer, vocab_tokenizer
from worker.errors import GGUFError
from worker.tokenizer import load_tokenizer

pytestmark = pytest.mark.story("LT-008")


def _engine_merges(tok) -> list[tuple[str, str]]:
    model = json.loads(tok._bpe.engine.to_str())["model"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]


@pytest.mark.parametrize("name", ["gpt-2", "qwen2", "llama-bpe"])
def test_merge_table_is_the_file_order_split_at_the_first_space(name):
    tok = vocab_tokenizer(name)
    raw = vocab_metadata(name)["tokenizer.ggml.merges"]
    expected = [(m[: m.index(" ", 1)], m[m.index(" ", 1) + 1:]) for m in raw]
    assert len(expected) == len(raw) > 40_000
    # What the BPE engine holds, read back through the engine's own serialisation.
    assert _engine_merges(tok) == expected


def test_smollm2_merges_all_reach_the_engine_and_match_gguf_reader():
    from gguf import GGUFReader

    path = need_smollm2()
    raw = GGUFReader(path).fields["tokenizer.ggml.merges"].contents()
    tok = smollm2_tokenizer()
    assert tok._bpe.dropped_merges == 0
    assert _engine_merges(tok) == [tuple(m.split(" ", 1)) for m in raw]


def test_merge_order_decides_tokenization_like_transformers():
    """Every vocabulary entry that is a whole word, encoded alone, gives what transformers gives:
    the merges (and their ranks) are applied in the file's order."""
    path = need_smollm2()
    ours, ref = smollm2_tokenizer(), smollm2_published(path)
    words = [t.decode("utf-8") for t in (ours.token_bytes(i) for i in range(ours.vocab_size))
             if _is_text(t)][::7][:3000]
    mismatches = [(w, ours.encode(w, add_special=False), ref.encode(w, add_special_tokens=False))
                  for w in words]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, f"{len(mismatches)} of {len(words)} words differ: {mismatches[:5]}"


def _is_text(data: bytes) -> bool:
    try:
        return bool(data.decode("utf-8").strip()) and b"<" not in data
    except UnicodeDecodeError:
        return False


def test_a_merge_without_a_space_is_refused():
    need_vocab("gpt-2")
    meta = dict(vocab_metadata("gpt-2"))
    meta["tokenizer.ggml.merges"] = ["Ġ t", "nospace"]
    with pytest.raises(GGUFError) as info:
        load_tokenizer(meta)
    assert info.value.code == "GGUF_BAD_METADATA" and "nospace" in info.value.message


def test_byte_level_bpe_needs_merges():
    need_vocab("gpt-2")
    meta = {k: v for k, v in vocab_metadata("gpt-2").items() if k != "tokenizer.ggml.merges"}
    with pytest.raises(GGUFError) as info:
        load_tokenizer(meta)
    assert info.value.code == "GGUF_MISSING_METADATA"
