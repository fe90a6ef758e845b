"""GT-029 / GT-030 MXFP4 dequantization reference and its unit tests (NumPy side): blocks of 32
E2M1 values with one E8M0 scale decode to the values the OCP Microscaling spec defines, in
ggml's element order, bit-exactly as gguf-py decodes them, for every scale and code."""
from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.gguf_corrupt import random_blocks
from worker.quant import QuantTensor, dequantize, dequantize_blocks
from worker.quant.mxfp4 import FP4_E2M1

pytestmark = pytest.mark.story("GT-029", "GT-030")

# OCP Microscaling Formats v1.0, table of FP4 E2M1 values (sign bit 3, exponent bits 2-1, mantissa bit 0)
OCP_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def _block(e: int, codes) -> np.ndarray:
    """One stored block: scale byte, then element i in the low nibble of byte i, i+16 in the high."""
    codes = np.asarray(codes, np.uint8)
    return np.concatenate([[e], codes[:16] | (codes[16:] << 4)]).astype(np.uint8).reshape(1, 17)


def _gguf(blocks: np.ndarray) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(blocks.copy(), Q.MXFP4)).reshape(-1, 32)


def test_e2m1_table_is_the_ocp_spec_table():
    np.testing.assert_array_equal(FP4_E2M1, np.array(OCP_E2M1, np.float32))


@pytest.mark.parametrize("code", range(16))
def test_each_code_at_unit_scale_is_its_spec_value(code):
    block = _block(127, [code] * 32)                    # E8M0 127 = 2^0
    out = dequantize_blocks(Q.MXFP4, block)
    assert (out == OCP_E2M1[code]).all()
    np.testing.assert_array_equal(out, _gguf(block))


@pytest.mark.parametrize("e,scale", [(127, 1.0), (128, 2.0), (126, 0.5), (137, 1024.0), (100, 2.0 ** -27)])
def test_scale_byte_is_a_power_of_two(e, scale):
    out = dequantize_blocks(Q.MXFP4, _block(e, [7] * 32))      # code 7 = 6.0
    assert (out == np.float32(6.0 * scale)).all()


@pytest.mark.parametrize("position", [0, 1, 15, 16, 17, 31])
def test_element_order_low_nibbles_first_then_high_nibbles(position):
    codes = [0] * 32
    codes[position] = 2                                  # 1.0 at one position only
    out = dequantize_blocks(Q.MXFP4, _block(127, codes))[0]
    assert out[position] == 1.0 and np.count_nonzero(out) == 1
    np.testing.assert_array_equal(out, _gguf(_block(127, codes))[0])


def test_every_scale_and_every_code_is_bit_exact_with_gguf_py():
    """All 256 scale bytes x all 16 codes in both nibbles: 4096 blocks, exhaustive."""
    e = np.repeat(np.arange(256, dtype=np.uint8), 16)
    lo = np.tile(np.arange(16, dtype=np.uint8), 256)
    codes = np.concatenate([np.repeat(lo[:, None], 16, 1), np.repeat(lo[::-1, None], 16, 1)], axis=1)
    blocks = np.concatenate([e[:, None], codes[:, :16] | (codes[:, 16:] << 4)], axis=1).astype(np.uint8)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ours, theirs = dequantize_blocks(Q.MXFP4, blocks), _gguf(blocks)
    assert np.count_nonzero(ours.view(np.uint32) != theirs.view(np.uint32)) == 0
    # ggml reads e=255 as 2^127 (not the spec's NaN): 6 * 2^127 overflows to inf, 0.5 * 2^127 does not
    assert np.isinf(ours[e == 255]).any() and not np.isnan(ours).any()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), experts=st.integers(1, 4), rows=st.integers(1, 6), blocks=st.integers(1, 6))
def test_random_expert_tensors_are_bit_exact(seed, experts, rows, blocks):
    raw = random_blocks(Q.MXFP4, experts * rows * blocks, np.random.default_rng(seed))
    t = QuantTensor("w", Q.MXFP4, (experts, rows, blocks * 32), raw.reshape(-1))
    expected = np.asarray(gguf.quants.dequantize(raw.reshape(experts, rows, -1), Q.MXFP4))
    np.testing.assert_array_equal(dequantize(t), expected)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), exponent=st.integers(-20, 20))
def test_representable_values_survive_quantize_then_dequantize_exactly(seed, exponent):
    """Values already on the MXFP4 grid (a power-of-two scale times E2M1 values, block max 6*s)
    are quantized by gguf-py and decoded by us back to exactly themselves."""
    rng = np.random.default_rng(seed)
    scale = np.float32(2.0 ** exponent)
    codes = rng.integers(0, 16, size=(8, 32))
    codes[:, 0] = 7                                     # every block reaches 6 * scale
    x = (np.array(OCP_E2M1, np.float32)[codes] * scale).astype(np.float32)
    stored = gguf.quants.quantize(x, Q.MXFP4)
    out = dequantize(QuantTensor("x", Q.MXFP4, x.shape, stored.reshape(-1)))
    np.testing.assert_array_equal(out, x)


def test_quantization_error_of_random_floats_is_within_the_format_bound():
    """Float reference: gguf-py's quantizer picks 2^(floor(log2 amax) - 2) as scale, so the
    largest magnitude is at most 8 scales and every error is at most 2 scales = amax / 4 (the
    gap between the E2M1 values 4 and 6, and the clamp above 6); small values are within half a
    step (0.25 scale)."""
    x = np.random.default_rng(0).standard_normal((64, 32 * 8)).astype(np.float32)
    stored = gguf.quants.quantize(x, Q.MXFP4)
    out = dequantize(QuantTensor("x", Q.MXFP4, x.shape, stored.reshape(-1))).reshape(-1, 32)
    blocks = x.reshape(-1, 32)
    scale = 2.0 ** (np.floor(np.log2(np.abs(blocks).max(axis=1, keepdims=True))) - 2)
    err = np.abs(out - blocks)
    assert (err <= 2 * scale + 1e-12).all()
    small = np.abs(blocks) <= 2 * scale                  # where E2M1 steps are 0.5 scale
    assert (err[small] <= 0.25 * np.broadcast_to(scale, blocks.shape)[small] + 1e-12).all()
