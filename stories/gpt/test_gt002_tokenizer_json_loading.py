"""GT-002 tokenizer.json loading: load_tokenizer(tokenizer_json=...) accepts a file path, a model
directory holding tokenizer.json, or the JSON text; a GGUF given alongside supplies BOS/EOS flags
and the chat template; a missing or malformed file is refused with TOKENIZER_JSON_INVALID."""
from __future__ import annotations

import json

import pytest

from fixtures.tokenizer_data import vocab_metadata
from fixtures.tokenizer_oracles import tiktoken_tokenizer_json, tokenizer_json_from_transformers, transformers_from_gguf
from fixtures.tokenizer_testing import need_qwen_ranks, need_smollm2, need_vocab
from worker.errors import WorkerError
from worker.tokenizer import load_tokenizer

pytestmark = pytest.mark.story("GT-002")

TEXT = "Tokenizer <|im_start|> test: 123 + ünïcödé 👍"


@pytest.fixture(scope="module")
def smollm2_json():
    ref = transformers_from_gguf("smollm2", str(need_smollm2()))
    return tokenizer_json_from_transformers("smollm2", ref), ref


def test_path_directory_and_text_load_the_same_tokenizer(smollm2_json):
    path, ref = smollm2_json
    by_path = load_tokenizer(tokenizer_json=path)
    by_dir = load_tokenizer(tokenizer_json=path.parent)
    by_text = load_tokenizer(tokenizer_json=path.read_text(encoding="utf-8"))
    expected = ref.encode(TEXT, add_special_tokens=False)
    assert by_path.encode(TEXT) == by_dir.encode(TEXT) == by_text.encode(TEXT) == expected


def test_gguf_alongside_supplies_flags_and_chat_template(smollm2_json):
    path, ref = smollm2_json
    gguf = need_smollm2()
    tok = load_tokenizer(gguf, tokenizer_json=path)
    assert tok.kind == "hf"
    assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id)
    assert not tok.add_bos
    assert tok.chat_template == ref.chat_template


def test_flags_from_a_gguf_metadata_dict_add_bos():
    # Phi-3's GGUF says add_bos_token = true; the tokenizer.json route honours it.
    path = need_vocab("phi-3")
    ref = transformers_from_gguf("phi-3", str(path))
    tok = load_tokenizer(vocab_metadata("phi-3"), tokenizer_json=tokenizer_json_from_transformers("phi-3", ref))
    assert tok.add_bos and tok.encode("Hello world") == ref.encode("Hello world", add_special_tokens=True)
    assert tok.decode(tok.encode("Hello world")) == "Hello world"


def test_converted_tiktoken_file_loads_without_a_gguf():
    need_qwen_ranks()
    tok = load_tokenizer(tokenizer_json=tiktoken_tokenizer_json("qwen"))
    assert tok.vocab_size == 151643 + 3
    assert tok.eos_id == 151643 and 151645 in tok.eos_ids  # <|endoftext|>, <|im_end|>


@pytest.mark.parametrize("source", [
    "/no/such/dir/tokenizer.json",
    "{ this is not json",
    json.dumps({"version": "1.0", "model": {"type": "NoSuchModel"}}),
    b"\xff\xfe not utf-8",
])
def test_unusable_sources_are_refused_with_a_clear_error(source):
    with pytest.raises(WorkerError) as info:
        load_tokenizer(tokenizer_json=source)
    assert info.value.code == "TOKENIZER_JSON_INVALID"
    assert info.value.message
