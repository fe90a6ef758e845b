"""GT-033 MXFP4 GEMM integration: a matmul on an MXFP4 weight equals the float matmul on the
weight as gguf-py dequantizes it, for any shape, magnitude and token count, for single weights
and for one expert of a stacked [E, N, K] tensor with its bias; the weight stays stored as
MXFP4 (17 bytes per 32 values).

Tolerance: |ours - x·Wᵀ| <= 1e-5 · (|x|·|W|ᵀ) elementwise (float32 accumulation against a float64
reference; the bound scales with the sum of absolute products, so cancellation cannot hide).
"""
import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stories.gpt._mxfp4_helpers import MXFP4, gguf_dequantized, mxfp4_tensor, record
from worker.backend.numpy import NumpyBackend
from worker.quant import QuantTensor

pytestmark = pytest.mark.story("GT-033")
RTOL = 1e-5


def assert_matmul_matches(ours, x, w, bias=None):
    x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
    reference = x64 @ w64.T + (0.0 if bias is None else np.asarray(bias, np.float64))
    bound = RTOL * (np.abs(x64) @ np.abs(w64).T + (0.0 if bias is None else np.abs(bias)) + 1e-30)
    excess = np.abs(np.asarray(ours, np.float64) - reference) - bound
    assert (excess <= 0).all(), f"{int((excess > 0).sum())} of {excess.size} outputs outside tolerance"
    return float(np.max(np.abs(ours - reference) / (np.abs(x64) @ np.abs(w64).T + 1e-30)))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tokens=st.integers(1, 9), rows=st.integers(1, 40),
       blocks=st.integers(1, 6), magnitude=st.integers(-30, 30))
def test_matmul_on_mxfp4_equals_float_matmul_on_gguf_py_dequantization(seed, tokens, rows, blocks, magnitude):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, blocks * 32)).astype(np.float32) * np.float32(2.0 ** magnitude)
    x = rng.standard_normal((tokens, blocks * 32)).astype(np.float32)
    stored = mxfp4_tensor(w)
    backend = NumpyBackend()
    assert_matmul_matches(backend.matmul(x, backend.load_weight(stored)), x, gguf_dequantized(stored))


@pytest.mark.parametrize("n_experts", [1, 4, 32])
def test_one_expert_of_a_stacked_tensor_with_its_bias(n_experts):
    rng = np.random.default_rng(n_experts)
    w = rng.standard_normal((n_experts, 48, 96)).astype(np.float32)
    bias = rng.standard_normal((n_experts, 48)).astype(np.float32)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    stored = mxfp4_tensor(w)
    dequantized = gguf_dequantized(stored)
    backend = NumpyBackend()
    weight, bias_weight = backend.load_weight(stored), backend.asarray(bias)
    worst = 0.0
    for e in list(range(n_experts)) + [n_experts - 1, 0]:          # revisit: cached experts stay right
        worst = max(worst, assert_matmul_matches(backend.matmul(x, weight, bias_weight, expert=e),
                                                 x, dequantized[e], bias[e]))
    record(f"GT-033 stacked experts E={n_experts}", worst_relative_to_abs_sum=worst)


def _raw_blocks(scale_bytes, codes) -> np.ndarray:
    """Blocks written by hand: scale byte, element i in the low nibble of byte i, i+16 in the high."""
    codes = np.asarray(codes, np.uint8).reshape(len(scale_bytes), 32)
    packed = codes[:, :16] | (codes[:, 16:] << 4)
    return np.concatenate([np.asarray(scale_bytes, np.uint8)[:, None], packed], axis=1).astype(np.uint8)


@pytest.mark.parametrize("case", ["all zero", "largest code", "subnormal scales", "large scales", "mixed signs"])
def test_hand_made_blocks(case):
    """Blocks the quantizer rarely writes: every code, extreme and subnormal E8M0 scales."""
    rng = np.random.default_rng(7)
    rows = 8
    codes = {
        "all zero": np.zeros((rows, 32)),
        "largest code": np.full((rows, 32), 7),                           # +6.0
        "subnormal scales": rng.integers(0, 16, (rows, 32)),
        "large scales": rng.integers(0, 16, (rows, 32)),
        "mixed signs": np.tile(np.arange(16), (rows, 2)),
    }[case]
    special = {"subnormal scales": [0, 1] * (rows // 2), "large scales": [150, 160] * (rows // 2)}
    scales = special.get(case, [127] * rows)
    raw = _raw_blocks(scales, codes)
    stored = QuantTensor("w", MXFP4, (rows, 32), raw.reshape(-1))
    x = rng.standard_normal((3, 32)).astype(np.float32)
    backend = NumpyBackend()
    ours = backend.matmul(x, backend.load_weight(stored))
    assert np.isfinite(ours).all()
    assert_matmul_matches(ours, x, gguf.quants.dequantize(raw, MXFP4).reshape(rows, 32))


def test_decode_rows_equal_prefill_rows():
    """One token at a time (decode) gives the rows of the whole-prompt (prefill) product, up to
    float32 summation order (BLAS takes a different path for one row)."""
    rng = np.random.default_rng(3)
    stored = mxfp4_tensor(rng.standard_normal((64, 128)))
    x = rng.standard_normal((16, 128)).astype(np.float32)
    backend = NumpyBackend()
    w = backend.load_weight(stored)
    prefill = backend.matmul(x, w)
    decode = np.concatenate([backend.matmul(x[t : t + 1], w) for t in range(len(x))])
    scale = np.abs(x.astype(np.float64)) @ np.abs(gguf_dequantized(stored).astype(np.float64)).T
    assert (np.abs(decode - prefill) <= RTOL * scale).all()
    assert_matmul_matches(decode, x, gguf_dequantized(stored))


def test_weight_stays_in_mxfp4_storage():
    """4.25 bits per value: the backend accounts the stored blocks, not a float32 copy."""
    stored = mxfp4_tensor(np.random.default_rng(4).standard_normal((4, 64, 256)))
    backend = NumpyBackend()
    backend.load_weight(stored)
    assert stored.qtype == MXFP4 and stored.raw.nbytes == 4 * 64 * 256 // 32 * 17
    assert backend.memory_report()["weights"] == stored.raw.nbytes
