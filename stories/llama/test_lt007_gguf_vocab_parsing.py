"""LT-007 GGUF vocab parsing: the tokenizer reads tokens, token types, scores and special-token ids
from GGUF metadata exactly as the file holds them, and refuses broken tokenizer metadata with a
clear error. Oracle: the `gguf` package's GGUFReader (not our reader) and transformers' GGUF loader."""
from __future__ import annotations

import numpy as np
import pytest

from fixtures.tokenizer_data import vocab_metadata
from fixtures.tokenizer_oracles import transformers_from_gguf
from fixtures.tokenizer_testing import need_smollm2, need_vocab, smollm2_tokenizer, vocab_tokenizer
from worker.errors import GGUFError, UnsupportedModelError
from worker.tokenizer import TokenType, load_tokenizer

pytestmark = pytest.mark.story("LT-007")


def _reader_fields(path):
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def test_smollm2_vocabulary_matches_what_gguf_reader_reads():
    path = need_smollm2()
    fields = _reader_fields(path)
    tok = load_tokenizer(path)  # from the file path
    assert tok.vocab_size == len(fields["tokenizer.ggml.tokens"]) == 49152
    assert tok.vocab.tokens == fields["tokenizer.ggml.tokens"]
    assert tok.vocab.token_types == list(fields["tokenizer.ggml.token_type"])
    assert [tok.token_text(i) for i in (0, 1, 2, 100, 49151)] == [fields["tokenizer.ggml.tokens"][i]
                                                                   for i in (0, 1, 2, 100, 49151)]
    assert tok.bos_id == fields["tokenizer.ggml.bos_token_id"]
    assert tok.eos_id == fields["tokenizer.ggml.eos_token_id"]
    assert tok.pad_id == fields["tokenizer.ggml.padding_token_id"]
    assert tok.add_bos is bool(fields["tokenizer.ggml.add_bos_token"])
    assert tok.chat_template == fields["tokenizer.chat_template"]


def test_sentencepiece_scores_and_types_match_gguf_reader():
    path = need_vocab("phi-3")
    fields = _reader_fields(path)
    tok = vocab_tokenizer("phi-3")
    assert tok.kind == "spm"
    assert np.array_equal(np.asarray(tok.vocab.scores, dtype=np.float32),
                          np.asarray(fields["tokenizer.ggml.scores"], dtype=np.float32))
    assert tok.vocab.token_types == list(fields["tokenizer.ggml.token_type"])
    # 256 byte-fallback tokens <0x00>..<0xFF>, each standing for its byte.
    byte_ids = [i for i, t in enumerate(tok.vocab.token_types) if t == TokenType.BYTE]
    assert len(byte_ids) == 256
    assert sorted(tok.token_bytes(i) for i in byte_ids) == [bytes([b]) for b in range(256)]
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (fields["tokenizer.ggml.bos_token_id"],
                                                    fields["tokenizer.ggml.eos_token_id"],
                                                    fields["tokenizer.ggml.unknown_token_id"])


def test_all_sources_give_the_same_tokenizer():
    """A metadata dict, a GGUF path and an object with `.metadata` load the same vocabulary."""
    path = need_vocab("gpt-2")
    meta = vocab_metadata("gpt-2")

    class HasMetadata:
        metadata = meta

    a, b, c = load_tokenizer(meta), load_tokenizer(path), load_tokenizer(HasMetadata())
    text = "Hello world, 123 tokens!"
    assert a.vocab.tokens == b.vocab.tokens == c.vocab.tokens
    assert a.encode(text) == b.encode(text) == c.encode(text)


def test_special_token_ids_agree_with_transformers_gguf_loader():
    path = need_smollm2()
    ours = smollm2_tokenizer()
    ref = transformers_from_gguf("smollm2", str(path))
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    # Control tokens (type 3) are exactly the special tokens transformers registers.
    control = {i for i, t in enumerate(ours.vocab.token_types) if t == TokenType.CONTROL}
    assert control == {i for i, t in ref.added_tokens_decoder.items() if t.special}
    assert all(ours.is_special(i) for i in control)


def test_end_of_generation_set_holds_eos_and_end_of_turn_tokens():
    qwen = vocab_tokenizer("qwen2")
    im_end = qwen.vocab.tokens.index("<|im_end|>")
    im_start = qwen.vocab.tokens.index("<|im_start|>")
    assert qwen.eos_id in qwen.eos_ids and im_end in qwen.eos_ids
    assert im_start not in qwen.eos_ids
    phi = vocab_tokenizer("phi-3")
    assert {phi.eos_id, phi.vocab.tokens.index("<|end|>")} <= phi.eos_ids


def test_add_bos_flag_follows_metadata():
    # Phi-3 says add_bos_token = true; SmolLM2 says false; transformers agrees on both.
    phi = vocab_tokenizer("phi-3")
    assert phi.encode("Hi")[0] == phi.bos_id and phi.encode("Hi", add_special=False)[0] != phi.bos_id
    smol = smollm2_tokenizer()
    ref = transformers_from_gguf("smollm2", str(need_smollm2()))
    assert smol.encode("Hi") == ref.encode("Hi", add_special_tokens=True)


def _meta(**changes):
    meta = dict(vocab_metadata("gpt-2"))
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    return meta


@pytest.mark.parametrize("changes, error, code", [
    ({"tokenizer__ggml__model": None}, GGUFError, "GGUF_MISSING_METADATA"),
    ({"tokenizer__ggml__tokens": None}, GGUFError, "GGUF_MISSING_METADATA"),
    ({"tokenizer__ggml__model": "bert"}, UnsupportedModelError, "UNSUPPORTED_TOKENIZER"),
    ({"tokenizer__ggml__pre": "no-such-pre"}, UnsupportedModelError, "UNSUPPORTED_TOKENIZER"),
    ({"tokenizer__ggml__tokens": []}, GGUFError, "GGUF_BAD_METADATA"),
    ({"tokenizer__ggml__tokens": [1, 2, 3]}, GGUFError, "GGUF_BAD_METADATA"),
    ({"tokenizer__ggml__token_type": [1, 1]}, GGUFError, "GGUF_BAD_METADATA"),
    ({"tokenizer__ggml__tokens": "not a list"}, GGUFError, "GGUF_BAD_METADATA"),
])
def test_broken_tokenizer_metadata_is_refused_with_a_stable_code(changes, error, code):
    need_vocab("gpt-2")
    with pytest.raises(error) as info:
        load_tokenizer(_meta(**changes))
    assert info.value.code == code
    assert info.value.message


def test_unreadable_files_are_refused_with_a_gguf_error(tmp_path):
    with pytest.raises(GGUFError) as info:
        load_tokenizer(tmp_path / "missing.gguf")
    assert info.value.code == "GGUF_UNREADABLE"
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file at all")
    with pytest.raises(GGUFError):
        load_tokenizer(junk)



def test_a_file_our_reader_refuses_is_refused_with_its_reason_not_read_another_way(tmp_path):
    """A vocabulary file whose one tensor's data is cut short: our validated reader refuses it, and the
    tokenizer says why (the reader's code and message), rather than reading it through gguf-py."""
    import gguf

    path = tmp_path / "vocab-with-a-cut-tensor.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(gguf.GGUFReader(need_vocab("gpt-2")).fields["tokenizer.ggml.tokens"].contents())
    writer.add_tensor("blk.0.x.weight", np.ones(64, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.write_bytes(path.read_bytes()[:-128])
    with pytest.raises(GGUFError) as info:
        load_tokenizer(path)
    assert info.value.code != "GGUF_INVALID" and "truncated" in info.value.message
