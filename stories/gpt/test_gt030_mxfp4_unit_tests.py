"""GT-030 MXFP4 unit tests of worker/quant/mxfp4.py, beyond what GT-029 pins (its E2M1 table,
one code at a time, a few scales and nibble positions, the exhaustive scale x code comparison).

Acceptance:
- E2M1: each of the 16 codes decodes to the value the OCP Microscaling v1.0 bit-field definition
  gives (sign bit 3, 2 exponent bits with bias 1, 1 mantissa bit; exponent 0 is subnormal), and
  ggml's doubled integer table is exactly twice that;
- E8M0: the scale byte e is 2^(e-127) for every e in 0..254 (the spec's whole range, 2^-127 ..
  2^127), decoded without flushing the subnormal halves to zero; 0xFF (the spec's NaN) is
  decoded as gguf-py decodes it (gguf-py, like ggml, defines no NaN: it reads 2^127);
- nibble order: byte i of a block's 16 data bytes holds element i in its low nibble and
  element i+16 in its high nibble, for any byte value and position;
- block layout: hypothesis-drawn blocks, their scale bytes biased to the extremes, in tensors of
  any number of rows and experts, dequantize bit-exactly as gguf-py's MXFP4 dequantize does;
- a tensor whose last dimension is not a multiple of 32 is refused with a clear error, by the
  dequantizer (ValueError naming the tensor and the block size) and by the GGUF reader
  (GGUF_TENSOR_SIZE_MISMATCH) before anything is loaded.
"""
from __future__ import annotations

import math
import warnings

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.gguf_corrupt import DIMS, _patch, _tensor_part, _u64, all_types_path
from worker.errors import GGUFError
from worker.gguf import GGUFModelFile
from worker.quant import FORMATS, QuantTensor, dequantize, dequantize_blocks
from worker.quant.mxfp4 import FP4_E2M1, FP4_E2M1_DOUBLED, e8m0_half

pytestmark = pytest.mark.story("GT-030")

# OCP Microscaling Formats (MX) v1.0, section 5.3.3 (FP4 E2M1): exponent bias 1, max normal
# 6.0 (E=11, M=1), min normal 1.0, the only subnormal 0.5 (E=00, M=1); no Inf or NaN encodings.
# E8M0 (section 5.4.1): unsigned exponent, bias 127, values 2^-127 .. 2^127, 0xFF = NaN.
E2M1_BIAS = 1
E8M0_BIAS = 127


def e2m1_from_bits(code: int) -> float:
    """The value the spec's bit fields define (written from the spec, not from a table)."""
    sign = -1.0 if code & 0b1000 else 1.0
    exponent = (code >> 1) & 0b11
    mantissa = code & 0b1
    if exponent == 0:                                        # subnormal: 2^(1-bias) * 0.M
        return sign * 2.0 ** (1 - E2M1_BIAS) * (mantissa / 2)
    return sign * 2.0 ** (exponent - E2M1_BIAS) * (1 + mantissa / 2)


def _gguf_py(blocks: np.ndarray) -> np.ndarray:
    """gguf-py's MXFP4 dequantization (the oracle), [n, 17] -> [n, 32]."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(gguf.quants.dequantize(np.ascontiguousarray(blocks), Q.MXFP4)).reshape(-1, 32)


def _ours(blocks: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return dequantize_blocks(Q.MXFP4, np.ascontiguousarray(blocks))


def _block(e: int, data: bytes | list[int]) -> np.ndarray:
    return np.array([[e, *data]], dtype=np.uint8)


# -- E2M1 ----------------------------------------------------------------------------------------

def test_the_spec_bit_fields_give_the_eight_magnitudes_and_their_negatives():
    """Guards the bit-field decoder below against a slip: the spec's listed values."""
    assert [e2m1_from_bits(c) for c in range(8)] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert [e2m1_from_bits(c) for c in range(8, 16)] == [-0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


@pytest.mark.parametrize("code", range(16))
def test_each_code_decodes_to_its_bit_field_value(code):
    expected = np.float32(e2m1_from_bits(code))
    assert FP4_E2M1[code] == expected
    assert FP4_E2M1_DOUBLED[code] == 2 * expected and float(FP4_E2M1_DOUBLED[code]).is_integer()
    out = _ours(_block(E8M0_BIAS, [code | code << 4] * 16))         # scale 2^0, both nibbles
    assert (out == expected).all()


def test_negative_zero_decodes_as_gguf_py_does():
    """Code 8 is the spec's -0; ggml's table holds integer 0 there. Either way it is zero, and
    its sign bit is what gguf-py gives (a -0 would flip the sign of nothing downstream)."""
    block = _block(E8M0_BIAS, [0x88] * 16)
    ours, theirs = _ours(block), _gguf_py(block)
    assert (ours == 0).all()
    assert np.array_equal(np.signbit(ours), np.signbit(theirs))


# -- E8M0 ----------------------------------------------------------------------------------------

def test_every_finite_scale_byte_is_two_to_the_e_minus_127():
    e = np.arange(255, dtype=np.uint8)                     # 0..254; 255 is NaN in the spec
    half = e8m0_half(e)
    assert half.dtype == np.float32
    for byte, value in zip(e.tolist(), half.tolist()):
        assert value * 2 == math.ldexp(1.0, byte - E8M0_BIAS), f"E8M0 {byte}"


@pytest.mark.parametrize("e,scale", [(0, 2.0 ** -127), (1, 2.0 ** -126), (2, 2.0 ** -125),
                                     (253, 2.0 ** 126), (254, 2.0 ** 127)])
def test_extreme_scale_bytes_decode_the_smallest_and_largest_code_exactly(e, scale):
    """The smallest value, 0.5 * 2^-127 = 2^-128, is a float32 subnormal: it must not flush to 0.
    At the top, 1.5 * 2^127 is float32's largest power-of-two multiple that stays finite; the
    spec's 6 * 2^127 exceeds float32's range (~2^128) and becomes inf, as in gguf-py."""
    data = [0x31] * 16                                     # low nibble code 1 (0.5), high code 3 (1.5)
    out = _ours(_block(e, data))[0]
    assert (out[:16] == np.float32(0.5 * scale)).all() and (out[16:] == np.float32(1.5 * scale)).all()
    assert (out != 0).all() and np.isfinite(out).all()
    np.testing.assert_array_equal(out, _gguf_py(_block(e, data))[0])
    top = _ours(_block(e, [0x77] * 16))[0]                 # code 7 = 6.0
    np.testing.assert_array_equal(top, _gguf_py(_block(e, [0x77] * 16))[0])
    assert np.isinf(top).all() == (6.0 * scale > float(np.finfo(np.float32).max))


def test_scale_byte_0xff_decodes_as_gguf_py_does():
    """The spec makes 0xFF a NaN scale; gguf-py defines no NaN and reads it as 2^127 (like
    ggml). We follow the oracle bit for bit, codes that overflow included."""
    data = bytes(range(16))                                # low nibbles 0..15, high nibbles 0
    block = _block(0xFF, data)
    ours, theirs = _ours(block), _gguf_py(block)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    assert ours[0, 1] == np.float32(2.0 ** 127)            # 0.5 * 2^128: still finite
    assert np.isinf(ours[0, 2])                            # 1.0 * 2^128 overflows


# -- nibble order ----------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 15), byte=st.integers(0, 255), e=st.integers(107, 147))
def test_byte_i_holds_element_i_low_and_element_i_plus_16_high(position, byte, e):
    data = [0] * 16
    data[position] = byte
    out = _ours(_block(e, data))[0]
    scale = 2.0 ** (e - E8M0_BIAS)
    expected = np.zeros(32, np.float32)
    expected[position] = e2m1_from_bits(byte & 0x0F) * scale
    expected[position + 16] = e2m1_from_bits(byte >> 4) * scale
    np.testing.assert_array_equal(out, expected)


# -- block layout against gguf-py ----------------------------------------------------------------

EXTREME_SCALES = [0, 1, 2, 126, 127, 128, 253, 254, 255]
scale_bytes = st.one_of(st.sampled_from(EXTREME_SCALES), st.integers(0, 255))
blocks_strategy = st.integers(1, 12).flatmap(
    lambda n: st.tuples(st.lists(scale_bytes, min_size=n, max_size=n),
                        st.lists(st.binary(min_size=16, max_size=16), min_size=n, max_size=n)))


@settings(max_examples=150, deadline=None)
@given(drawn=blocks_strategy)
def test_drawn_blocks_dequantize_bit_exactly_as_gguf_py(drawn):
    scales, data = drawn
    blocks = np.array([[e, *d] for e, d in zip(scales, data)], dtype=np.uint8)
    ours, theirs = _ours(blocks), _gguf_py(blocks)
    assert ours.shape == theirs.shape == (len(scales), 32)
    differ = np.count_nonzero(ours.view(np.uint32) != theirs.view(np.uint32))
    assert differ == 0, f"{differ} of {ours.size} values differ from gguf-py"


@settings(max_examples=60, deadline=None)
@given(experts=st.integers(1, 3), rows=st.integers(1, 5), blocks_per_row=st.integers(1, 5),
       data=st.data())
def test_drawn_tensors_keep_row_major_block_order(experts, rows, blocks_per_row, data):
    """A tensor [experts, rows, 32 * blocks]: block b of row r is stored after all blocks of the
    rows before it, as in gguf-py's reading of the same bytes."""
    n = experts * rows * blocks_per_row
    scales = data.draw(st.lists(scale_bytes, min_size=n, max_size=n))
    payload = data.draw(st.binary(min_size=16 * n, max_size=16 * n))
    blocks = np.concatenate([np.array(scales, np.uint8)[:, None],
                             np.frombuffer(payload, np.uint8).reshape(n, 16)], axis=1)
    shape = (experts, rows, 32 * blocks_per_row)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ours = dequantize(QuantTensor("experts", Q.MXFP4, shape, blocks.reshape(-1)))
    theirs = _gguf_py(blocks).reshape(shape)
    assert ours.shape == shape
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


# -- last dimension not a multiple of 32 --------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 48), (1, 16), (3, 33), (2, 4, 40)])
def test_dequantizer_refuses_a_row_that_is_not_whole_blocks(shape):
    n_values = int(np.prod(shape))
    raw = np.zeros(-(-n_values // 32) * 17, np.uint8)       # enough bytes: only the shape is wrong
    with pytest.raises(ValueError) as e:
        dequantize(QuantTensor("blk.0.ffn_up_exps.weight", Q.MXFP4, shape, raw))
    message = str(e.value)
    assert "blk.0.ffn_up_exps.weight" in message and "MXFP4" in message
    assert str(shape[-1]) in message and "whole number" in message


def test_dequantizer_refuses_stored_bytes_that_do_not_match_the_shape():
    with pytest.raises(ValueError, match="bytes stored"):
        dequantize(QuantTensor("w", Q.MXFP4, (2, 64), np.zeros(4 * 17 - 1, np.uint8)))


@pytest.mark.parametrize("name,ne0", [("t.MXFP4", 496), ("t.experts.MXFP4", 40)])
def test_gguf_reader_refuses_an_mxfp4_tensor_whose_rows_are_not_whole_blocks(tmp_path, name, ne0):
    """The file's tensor table says a row has ne0 values (ne[0], ggml's innermost dimension):
    refused with GGUF_TENSOR_SIZE_MISMATCH before any tensor is read."""
    assert ne0 % FORMATS[Q.MXFP4].block_size
    data = all_types_path().read_bytes()
    path = tmp_path / "bad.gguf"
    path.write_bytes(_patch(data, _tensor_part(data, name, DIMS), _u64(ne0)))
    with pytest.raises(GGUFError) as e:
        GGUFModelFile.open(path, detect=False)
    assert e.value.code == "GGUF_TENSOR_SIZE_MISMATCH"
    assert name in e.value.message and "MXFP4" in e.value.message and "32" in e.value.message
