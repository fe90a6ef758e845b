"""GT-006 GGUF v3 tensor support for MXFP4: MXFP4 tensors (ggml type 39, 17 bytes per 32 values)
in v3 (and v2) files are listed with the right shape and size, their stored bytes come back
untouched as zero-copy views, and they dequantize exactly as gguf-py does."""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from fixtures.gguf_corrupt import TINY, Layout, random_blocks, tiny_model_path
from worker.errors import GGUFError
from worker.gguf import GGUFModelFile
from worker.quant import FORMATS, dequantize

pytestmark = pytest.mark.story("GT-006")


def test_mxfp4_is_ggml_type_39_with_17_byte_blocks_of_32():
    assert int(Q.MXFP4) == 39
    assert gguf.GGML_QUANT_SIZES[Q.MXFP4] == (32, 17)
    assert (FORMATS[Q.MXFP4].block_size, FORMATS[Q.MXFP4].type_size) == (32, 17)


def _write(path, tensors: dict, version: int = 3):
    writer = gguf.GGUFWriter(str(path), "gpt-oss")
    for name, raw in tensors.items():
        writer.add_tensor(name, raw, raw_dtype=Q.MXFP4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if version != 3:
        data = bytearray(path.read_bytes())
        struct.pack_into("<I", data, 4, version)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("version", [3, 2])
def test_stacked_expert_tensor_reads_back_as_written(tmp_path, version):
    rng = np.random.default_rng(7)
    E, F, D = 3, 5, 96                                   # 3 experts of [5, 96]: 3 blocks per row
    raw = random_blocks(Q.MXFP4, E * F * D // 32, rng).reshape(E, F, D // 32 * 17)
    path = _write(tmp_path / "e.gguf", {"blk.0.ffn_up_exps.weight": raw}, version)
    with GGUFModelFile.open(path, detect=False) as gf:
        assert gf.version == version
        info = gf.tensors["blk.0.ffn_up_exps.weight"]
        assert info.qtype == Q.MXFP4 and info.shape == (E, F, D) and info.ne == (D, F, E)
        assert info.nbytes == E * F * D // 32 * 17
        t = gf.tensor(info.name)
        assert t.raw.tobytes() == raw.tobytes() and not t.raw.flags.owndata
        expected = gguf.quants.dequantize(raw, Q.MXFP4)
        assert expected.shape == (E, F, D)
        np.testing.assert_array_equal(dequantize(t), expected)
        # one expert is a contiguous slice of whole rows: e's bytes dequantize to expert e
        per_expert = info.nbytes // E
        from worker.quant import QuantTensor
        one = QuantTensor("e1", Q.MXFP4, (F, D), t.raw[per_expert:2 * per_expert])
        np.testing.assert_array_equal(dequantize(one), expected[1])


def test_gpt_oss_tiny_model_experts_are_mxfp4_and_match_gguf_py():
    path = tiny_model_path("gpt-oss")
    oracle = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    E, FE, D = TINY["experts"], TINY["expert_ffn"], TINY["hidden"]
    shapes = {"ffn_gate_exps": (E, FE, D), "ffn_up_exps": (E, FE, D), "ffn_down_exps": (E, D, FE)}
    with GGUFModelFile.open(path) as gf:
        for layer in range(TINY["layers"]):
            for kind, shape in shapes.items():
                name = f"blk.{layer}.{kind}.weight"
                assert gf.tensors[name].qtype == Q.MXFP4 and gf.tensors[name].shape == shape
                np.testing.assert_array_equal(
                    dequantize(gf.tensor(name)), gguf.quants.dequantize(oracle[name].data, Q.MXFP4))


def test_mxfp4_row_that_is_not_whole_blocks_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    raw = random_blocks(Q.MXFP4, 4, rng).reshape(2, 34)
    path = _write(tmp_path / "m.gguf", {"w": raw})
    dims_at = Layout.of(path.read_bytes()).tensors["w"][1][3][0]
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, dims_at, 48)          # ne[0] = 48: one and a half blocks
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path, detect=False)
    assert e.value.code == "GGUF_TENSOR_SIZE_MISMATCH" and "MXFP4" in e.value.message
