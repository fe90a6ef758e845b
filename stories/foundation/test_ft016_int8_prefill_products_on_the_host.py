"""FT-016 prefill products of Q8_0 weights on int8 tensor cores (worker/backend/kernels/mmq.cu), checked without a
GPU: mmq.cu compiled for the host by the system C++ compiler, each CUDA thread of a block a host fiber
(stories/llama/_host_cuda.py: __syncthreads and the warp exchanges are barriers, blocks run in a shuffled order),
launched through the backend's own launcher (worker/backend/kernels/mmq.py), so that its grid, block size and
argument order are checked as well. The tensor-core instruction (mma_s8.cuh, mma.sync m16n8k32 .s8) is replaced
by a host version that gathers the warp's fragments as the PTX ISA lays them out; the layout itself is checked
against the ISA's element formulas, and the same build with a wrong layout fails the kernel's check.

  * the kernel equals the exact product of what the int8 terms carry (stories/foundation/_mmq_reference.py:
    exact integer block sums, scaled in float64) up to float32 accumulation (term-normalized 1e-12);
  * and lands on gguf-py's dequantized weights times the float activations within the decode products'
    thresholds (the same activation blocks): term-normalized matvec_q8x2 (1e-8) with two terms, plain NMSE
    matvec_q8 (5e-4) with one;
  * on the int8 input made by vecdot.cu's own quantize_q8 (built beside it), which equals the reference's
    quantization byte for byte: the two kernels agree on the term stride and the scale layout;
  * over hypothesis-drawn T, N (not multiples of the 64 x 64 tile) and K (1 to 10 blocks of 32: partial
    stages of 4 blocks), and hand-picked cases: T = 5 with N = 1, values at the int8 range's ends (-128
    weights, +-127 activations), zero blocks, bias and a residual (y itself as the residual).
The GPU runs the same comparisons in test_ft016_int8_prefill_products.py. Skipped where g++ or cpp is missing.
"""
from __future__ import annotations

import ctypes
import re
import shutil

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.gguf_corrupt import random_blocks
from fixtures.paths import REPO_ROOT
from stories.foundation._cuda_conformance import THRESHOLDS, nmse
from stories.foundation._mmq_reference import dequantized, int8_product, term_normalized
from stories.llama._host_cuda import (
    HOST_MMA_BF16,
    HOST_MMA_S8,
    THREADED_LAUNCH,
    THREADED_PRELUDE,
    build_host_library,
    device_function,
    host_entries,
    kernel_body,
)
from stories.llama.test_lt019_int8_products_on_the_host import quantize_like_the_gpu
from worker.backend.cuda_runtime import NULL, elementwise_grid
from worker.backend.kernels import mmq, vecdot

pytestmark = [pytest.mark.story("FT-016"),
              pytest.mark.skipif(shutil.which("g++") is None or shutil.which("cpp") is None,
                                 reason="g++ and cpp are needed to build the kernels for the host")]

KERNELS = REPO_ROOT / "worker" / "backend" / "kernels"
PAD = 16                              # worker/backend/cuda_memory.py's WEIGHT_TAIL_PAD
EXACT = 1e-12                         # float32 accumulation of exact block sums, term-normalized
Q8_0 = GGMLQuantizationType.Q8_0

_PRELUDE = THREADED_PRELUDE + r"""
#define __restrict__
#define __align__(n) __attribute__((aligned(n)))
""" + HOST_MMA_S8 + HOST_MMA_BF16 + THREADED_LAUNCH + r"""
// One warp's product on fragments given per lane (a: 4 registers, b: 2, d: 4 a lane).
static void mma_warp_body(const u32* a, const u32* b, int* d) {
    const int l = threadIdx.x % 32;
    mma_s8_16x8x32(d + 4 * l, a + 4 * l, b + 2 * l);
}
"""


def _quantize_kernel() -> str:
    """vecdot.cu's quantize_q8, the kernel that makes the int8 activations the product reads."""
    m = re.search(r'^extern "C" __global__ void quantize_q8\(.*?^}\n', (KERNELS / "vecdot.cu").read_text(),
                  flags=re.S | re.M)
    assert m, "vecdot.cu no longer defines quantize_q8"
    return m.group(0)


@pytest.fixture(scope="module")
def host_mmq(tmp_path_factory):
    source = (KERNELS / "mmq.cu").read_text()
    assert '#include "mma_s8.cuh"' in source and "mma_s8_16x8x32(" in source   # the instruction stood in for
    helpers = device_function(KERNELS / "common.cuh", "warp_max") + "".join(
        device_function(KERNELS / "vecdot.cuh", n) for n in ("quantize_block_warp", "load16_any", "load_f16_a2"))
    helpers += "".join(device_function(KERNELS / "mma_bf16.cuh", n)
                       for n in ("bf16_round_bits", "bf16_split_bits", "bf16_pack"))
    kernels = kernel_body(KERNELS / "mmq.cu") + _quantize_kernel()
    warp = ('extern "C" void host_mma_warp(const u32* a, const u32* b, int* d) '
            '{ launch3(1, 1, 1, 32, 0, [=] { mma_warp_body(a, b, d); }); }\n')
    text = _PRELUDE + helpers + kernels + warp + host_entries(kernels, grid_dims=3)
    return build_host_library(text, tmp_path_factory.mktemp("mmq"), "mmq_host", timeout=600)


class HostBackend:
    """Just enough of a CudaBackend for the launcher: `_launch` runs the host build of the kernel."""

    def __init__(self, lib, seed: int = 0):
        self.lib, self.seed, self.launched = lib, seed, []

    def _launch(self, module, name, grid, block, args, *, keeps_quantized_input: bool = False) -> None:
        assert keeps_quantized_input          # mmq writes y alone, quantize_q8 the int8 input: neither invalidates it
        gx, gy, gz = (grid + (1, 1))[:3] if isinstance(grid, tuple) else (grid, 1, 1)
        self.launched.append((name, (gx, gy, gz), block))
        self.seed += 1
        getattr(self.lib, f"host_{name}")(*(ctypes.c_uint(int(v)) for v in (gx, gy, gz, block, self.seed)),
                                          *(_c(a) for a in args))


def _c(a):
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if a is NULL or (isinstance(a, np.uint64) and int(a) == 0):
        return ctypes.c_void_p(0)
    return {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float32: ctypes.c_float}[type(a)](a)


# -- the host instruction's fragment layout ----------------------------------------------------------------

def ptx_fragments(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The m16n8k32 .s8 fragments of A [16, 32] and B [32, 8], lane by lane, from the PTX ISA's element formulas
    (groupID = lane >> 2, threadID_in_group = lane % 4; a0..a15 four a register, b0..b7 likewise):
    A: row = groupID for a_i with i < 4 or 8 <= i < 12, else groupID + 8; col = 4 threadID_in_group + (i & 3),
    + 16 for i >= 8. B: row = 4 threadID_in_group + (i & 3), + 16 for i >= 4; col = groupID."""
    a, b = np.zeros((32, 4, 4), np.int8), np.zeros((32, 2, 4), np.int8)
    for lane in range(32):
        group, tig = lane >> 2, lane % 4
        for i in range(16):
            row = group if i < 4 or 8 <= i < 12 else group + 8
            a[lane, i // 4, i % 4] = A[row, 4 * tig + (i & 3) + (16 if i >= 8 else 0)]
        for i in range(8):
            b[lane, i // 4, i % 4] = B[4 * tig + (i & 3) + (16 if i >= 4 else 0), group]
    return a.view(np.uint32).reshape(32, 4), b.view(np.uint32).reshape(32, 2)


def ptx_accumulator(D: np.ndarray) -> np.ndarray:
    """D [16, 8] as the lanes hold it: c_i of lane (groupID, threadID_in_group) is D[groupID + 8 (i >= 2)]
    [2 threadID_in_group + (i & 1)]."""
    return np.array([[D[(lane >> 2) + 8 * (i >= 2), 2 * (lane % 4) + (i & 1)] for i in range(4)]
                     for lane in range(32)], np.int32)


def _warp_product(lib, A, B, C):
    a, b = ptx_fragments(A, B)
    d = ptx_accumulator(C).copy()
    lib.host_mma_warp(ctypes.c_void_p(a.ctypes.data), ctypes.c_void_p(b.ctypes.data), ctypes.c_void_p(d.ctypes.data))
    return d


def test_the_host_instruction_follows_the_ptx_fragment_layout(host_mmq):
    rng = np.random.default_rng(1)
    A = rng.integers(-128, 128, (16, 32)).astype(np.int8)
    B = rng.integers(-128, 128, (32, 8)).astype(np.int8)
    C = rng.integers(-1000, 1000, (16, 8)).astype(np.int32)
    want = ptx_accumulator(A.astype(np.int64) @ B.astype(np.int64) + C)
    np.testing.assert_array_equal(_warp_product(host_mmq, A, B, C), want)
    extreme = np.full((16, 32), -128, np.int8), np.full((32, 8), -128, np.int8)   # 32 * 2^14 = 2^19, exact
    np.testing.assert_array_equal(_warp_product(host_mmq, *extreme, np.zeros((16, 8), np.int32)),
                                  np.full((32, 4), 1 << 19, np.int32))
    for wrong in (1, 2):                      # the negative controls differ from the ISA's product
        host_mmq.host_set_mma_s8_layout(wrong)
        try:
            assert not np.array_equal(_warp_product(host_mmq, A, B, C), want), f"layout {wrong} not told apart"
        finally:
            host_mmq.host_set_mma_s8_layout(0)


# -- the kernel ------------------------------------------------------------------------------------------

def _q8_0_rows(rng, N: int, K: int, *, extreme: bool = False, zero_rows=(), zero_blocks=()) -> np.ndarray:
    """N stored Q8_0 rows (fixtures' random blocks: finite f16 scales in [-1, 1]) as uint8 [N, K/32 * 34]."""
    blocks = random_blocks(Q8_0, N * K // 32, rng).reshape(N, K // 32, 34)
    if extreme:                               # the int8 range's ends
        blocks[:, :, 2:] = rng.choice(np.array([-128, 127, -127], np.int8), blocks[:, :, 2:].shape).view(np.uint8)
    for n in zero_rows:
        blocks[n, :, :2] = 0                  # a zero scale
    for b in zero_blocks:
        blocks[:, b, 2:] = 0                  # zero quants
    return blocks.reshape(N, -1)


def _run(lib, blocks: np.ndarray, x: np.ndarray, terms: int, *, bias=None, residual=None, in_place=False,
         splits: int = 1):
    """The launcher's product on host buffers, k split over `splits` blocks a tile: (y, the launches made)."""
    k = HostBackend(lib)
    T, K = x.shape
    N = blocks.shape[0]
    raw = np.concatenate([blocks.reshape(-1), np.zeros(PAD, np.uint8)])
    xq, xds, _ = quantize_like_the_gpu(x, terms)
    if terms == 1:
        xq[1] = 99                            # quantize_q8 leaves term 1 unwritten: the kernel must not read it
    xq = np.ascontiguousarray(xq.reshape(-1))
    xds = np.ascontiguousarray(xds)
    partials = np.full(splits * T * N, np.nan, np.float32) if splits > 1 else None     # all written, or NaN stays
    y = residual.copy() if in_place else np.full((T, N), np.nan, np.float32)
    mmq.product(k, raw, blocks.shape[1], xq, xds, y, T, N, K, terms, bias=bias, residual=y if in_place else residual,
                splits=splits, partials=partials)
    return y, k.launched


def _check(lib, blocks, x, terms, *, bias=None, residual=None, in_place=False, splits=1, case=""):
    T, K = x.shape
    N = blocks.shape[0]
    y, launched = _run(lib, blocks, x, terms, bias=bias, residual=residual, in_place=in_place, splits=splits)
    want = [("mmq_q8_0", (-(-N // mmq.MMQ_BN), -(-T // mmq.MMQ_BM), splits), mmq.MMQ_THREADS)]
    if splits > 1:
        want.append(("mmq_sum_splits", (elementwise_grid(T * N), 1, 1), 256))
    assert launched == want
    assert lib.host_mma_s8_count() > 0, "the product did not go through the tensor-core instruction"
    assert np.isfinite(y).all(), f"{case}: an output left unwritten (NaN) or not finite"
    start = np.zeros((T, N))
    if bias is not None:
        start += bias.astype(np.float64)
    if residual is not None:
        start += residual.astype(np.float64)
    dense = dequantized(blocks, N, K)
    exact = int8_product(x, blocks, N, terms) + start
    err = term_normalized(y, exact, x, dense)
    assert err <= EXACT, f"{case}: {err:.3e} from the exact int8 product (terms={terms})"
    floats = x.astype(np.float64) @ dense.T + start
    if terms == 2:
        err = term_normalized(y, floats, x, dense)
        assert err <= THRESHOLDS["matvec_q8x2"], f"{case}: term-normalized {err:.3e} from x @ W^T"
    else:
        err = nmse(y, floats)
        assert err <= THRESHOLDS["matvec_q8"], f"{case}: NMSE {err:.3e} from x @ W^T"
    return y


@pytest.mark.parametrize("terms", [2, 1])
@pytest.mark.parametrize("T,N,n_blocks", [(5, 1, 1), (5, 1, 7), (64, 64, 4), (65, 129, 5), (130, 70, 9),
                                          (7, 200, 2)])
def test_kernel_matches_the_reference(host_mmq, T, N, n_blocks, terms):
    rng = np.random.default_rng(1000 * T + 10 * N + n_blocks + terms)
    K = 32 * n_blocks
    x = rng.standard_normal((T, K)).astype(np.float32)
    _check(host_mmq, _q8_0_rows(rng, N, K), x, terms, case=f"T={T} N={N} K={K}")


@pytest.mark.parametrize("T,N,n_blocks,splits", [(5, 1, 7, 2), (65, 129, 36, 3), (70, 33, 9, 3), (9, 40, 4, 3),
                                                 (66, 70, 13, 8)])
def test_k_split_over_blocks_matches_the_reference(host_mmq, T, N, n_blocks, splits):
    """Each tile's k stages split over `splits` blocks (partial sums, then mmq_sum_splits with bias and residual):
    uneven runs, a last stage of fewer blocks, and splits with no stage at all (4 blocks = 1 stage over 3)."""
    rng = np.random.default_rng(T + N + n_blocks + splits)
    K = 32 * n_blocks
    x = rng.standard_normal((T, K)).astype(np.float32)
    bias, residual = rng.standard_normal(N).astype(np.float32), rng.standard_normal((T, N)).astype(np.float32)
    _check(host_mmq, _q8_0_rows(rng, N, K), x, 2, bias=bias, residual=residual, in_place=True, splits=splits,
           case=f"T={T} N={N} K={K} splits={splits}")


def test_the_split_choice_fills_the_gpu_without_tiny_runs():
    """One split where the tiles fill two blocks an SM (GPT-OSS's q product at T = 512); GPT-OSS's k and v products
    at T = 128 (16 tiles) split 8 ways; never more splits than pairs of stages."""
    assert mmq.k_splits(512, 4096, 2880) == 1 and mmq.k_splits(2048, 512, 2880) == 1
    assert mmq.k_splits(128, 512, 2880) == mmq.MMQ_MAX_SPLITS
    assert mmq.k_splits(128, 4096, 2880) == 2                  # 128 tiles: two blocks a tile, one wave
    assert mmq.k_splits(64, 64, 32 * mmq.MMQ_KB * 3) == 1       # 3 stages: no split of fewer than 2
    for T, N, K in [(5, 1, 32), (100, 3000, 4096), (7, 7, 32 * 4 * 40)]:
        splits = mmq.k_splits(T, N, K)
        assert 1 <= splits <= mmq.MMQ_MAX_SPLITS
        assert splits == 1 or splits * mmq.MMQ_MIN_SPLIT_STAGES <= -(-K // 32 // mmq.MMQ_KB)


def test_values_at_the_int8_range_ends(host_mmq):
    """-128 and +-127 weights; each activation block led by one large value (|q0| = 127 there), its others
    small (the second term carries them)."""
    rng = np.random.default_rng(3)
    T, N, K = 70, 67, 160
    x = rng.standard_normal((T, K)).astype(np.float32) * 1e-2
    x[:, ::32] = rng.choice([-1e3, 1e3], (T, K // 32))
    _check(host_mmq, _q8_0_rows(rng, N, K, extreme=True), x, 2, case="int8 range ends")
    _check(host_mmq, _q8_0_rows(rng, N, K, extreme=True), x, 1, case="int8 range ends, one term")


def test_zero_blocks_rows_and_tokens(host_mmq):
    """Zero activation blocks (d0 = d1 = 0), a token of zeros, weight rows of zero scale, blocks of zero quants:
    their outputs are exactly the others' sums, zeros where everything is zero."""
    rng = np.random.default_rng(4)
    T, N, K = 9, 40, 192
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[:, 32:64] = 0.0
    x[3] = 0.0
    blocks = _q8_0_rows(rng, N, K, zero_rows=(0, 39), zero_blocks=(5,))
    y = _check(host_mmq, blocks, x, 2, case="zero blocks")
    assert (y[3] == 0).all() and (y[:, 0] == 0).all() and (y[:, 39] == 0).all()


def test_bias_and_residual(host_mmq):
    rng = np.random.default_rng(5)
    T, N, K = 33, 77, 96
    x = rng.standard_normal((T, K)).astype(np.float32)
    blocks = _q8_0_rows(rng, N, K)
    bias = rng.standard_normal(N).astype(np.float32)
    residual = rng.standard_normal((T, N)).astype(np.float32)
    _check(host_mmq, blocks, x, 2, bias=bias, case="bias")
    _check(host_mmq, blocks, x, 2, residual=residual, case="residual")
    _check(host_mmq, blocks, x, 2, bias=bias, residual=residual, in_place=True, case="bias + residual in place")


@pytest.mark.parametrize("layout", [1, 2])
def test_a_wrong_fragment_layout_fails_the_check(host_mmq, layout):
    """The same kernel on a host instruction with a wrong layout lands far from the reference."""
    rng = np.random.default_rng(6)
    T, N, K = 20, 24, 64
    x = rng.standard_normal((T, K)).astype(np.float32)
    blocks = _q8_0_rows(rng, N, K)
    host_mmq.host_set_mma_s8_layout(layout)
    try:
        y, _ = _run(host_mmq, blocks, x, 2)
    finally:
        host_mmq.host_set_mma_s8_layout(0)
    assert term_normalized(y, int8_product(x, blocks, N), x, dequantized(blocks, N, K)) > 1e-4


@pytest.mark.parametrize("terms", [2, 1])
def test_the_activations_of_quantize_q8_feed_the_kernel(host_mmq, terms):
    """The int8 input made by the GPU's own quantize_q8 (vecdot.quantize, as CudaBackend.matmul makes it) is the
    reference's quantization byte for byte, and the product on it matches the reference: the two kernels agree
    on the term stride and the scale layout."""
    rng = np.random.default_rng(7 + terms)
    T, N, K = 70, 65, 224
    x = rng.standard_normal((T, K)).astype(np.float32)
    k = HostBackend(host_mmq)
    xq, xds = np.full(2 * T * K, 77, np.int8), np.full(T * (K // 32) * 4, np.nan, np.float32)
    vecdot.quantize(k, x, xq, xds, T, K, terms)
    want_q, want_ds, _ = quantize_like_the_gpu(x, terms)
    np.testing.assert_array_equal(xq[:terms * T * K], want_q[:terms].reshape(-1))
    np.testing.assert_array_equal(xds.reshape(T, K // 32, 4)[..., :2], want_ds[..., :2])
    blocks = _q8_0_rows(rng, N, K)
    raw = np.concatenate([blocks.reshape(-1), np.zeros(PAD, np.uint8)])
    y = np.full((T, N), np.nan, np.float32)
    mmq.product(k, raw, blocks.shape[1], xq, xds, y, T, N, K, terms, splits=1)
    assert [name for name, _, _ in k.launched] == ["quantize_q8", "mmq_q8_0"]
    dense = dequantized(blocks, N, K)
    assert term_normalized(y, int8_product(x, blocks, N, terms), x, dense) <= EXACT


def test_the_launcher_refuses_what_the_kernel_does_not_do():
    with pytest.raises(ValueError, match="K a multiple of 32"):
        mmq.product(None, None, 0, None, None, None, 8, 8, 48, 2)
    with pytest.raises(ValueError, match="no kernel"):
        mmq.product(None, None, 0, None, None, None, 8, 8, 64, 2, fmt="q4_0")
    with pytest.raises(ValueError, match="1 or 2 int8 terms"):
        mmq.product(None, None, 0, None, None, None, 8, 8, 64, 3)
    with pytest.raises(ValueError, match="K a multiple of 32"):
        mmq.product_bf16(None, None, 0, None, None, 8, 8, 48)
    with pytest.raises(ValueError, match="at least one split"):
        mmq.product_bf16(None, None, 0, None, None, 8, 8, 64, splits=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(T=st.integers(5, 140), N=st.integers(1, 140), n_blocks=st.integers(1, 10), terms=st.sampled_from([2, 1]),
       scale=st.sampled_from([1.0, 1e-6, 1e4]), splits=st.sampled_from([1, 1, 2, 3]), seed=st.integers(0, 2**31))
def test_kernel_matches_the_reference_over_drawn_shapes(host_mmq, T, N, n_blocks, terms, scale, splits, seed):
    rng = np.random.default_rng(seed)
    K = 32 * n_blocks
    x = (rng.standard_normal((T, K)) * scale).astype(np.float32)
    _check(host_mmq, _q8_0_rows(rng, N, K), x, terms, splits=splits,
           case=f"T={T} N={N} K={K} scale={scale} splits={splits}")


@pytest.mark.parametrize("path,fmt,T,expected", [
    ("auto", "q8_0", 5, True), ("auto", "q8_0", mmq.MMQ_AUTO_MAX_T, True),
    ("auto", "q8_0", mmq.MMQ_AUTO_MAX_T + 1, False), ("auto", "q4_k", 128, False), ("mma", "q8_0", 4096, True),
    ("mma", "q4_0", 128, False),
    ("tf32x3", "q8_0", 128, False)])
def test_the_path_choice_of_a_prefill_product(path, fmt, T, expected):
    """auto, the default, takes the int8 kernel for Q8_0 products up to MMQ_AUTO_MAX_T tokens (where it measured
    faster), mma at every T, tf32x3 never; other formats never."""
    assert mmq.uses_mma(path, fmt, T) is expected


@pytest.mark.parametrize("terms,q8,fmt,T,N,K,path", [
    (2, "auto", "q8_0", 1, 4096, 2880, "mmvq"), (2, "auto", "q8_0", 4, 4096, 2880, "mmvq"),
    (0, "auto", "q8_0", 4, 4096, 2880, "matvec"), (2, "auto", "f32", 2, 64, 64, "matvec"),
    (2, "auto", "q8_0", 7, 96, 128, "mma"), (2, "auto", "q8_0", 128, 4096, 2880, "mma"),
    (2, "auto", "q8_0", mmq.MMQ_AUTO_MAX_T + 1, 4096, 2880, "tf32x3"), (2, "auto", "q4_k", 128, 896, 896, "tf32x3"),
    (2, "tf32x3", "q8_0", 128, 4096, 2880, "tf32x3"), (2, "bf16", "q8_0", 128, 4096, 2880, "bf16"),
    (2, "auto", "q8_0", 128, 32, 2880, "matvec")])
def test_every_product_has_one_path_and_the_conformance_row_follows_it(terms, q8, fmt, T, N, K, path):
    """cuda.product_path is the one choice of kernel CudaBackend.matmul follows (int8 decode products up to
    MMVQ_MAX_T tokens, the float matvec for few tokens or a weight of few rows, then the Q8_0 tensor-core paths,
    else tf32x3), and the conformance checks hold each product to its path's row. An expert's product of 7 tokens
    on Q8_0 runs on the int8 tensor cores: held to the float row (1e-11) it failed on the H200 at 1.02e-11, as
    the two int8 terms allow (matmul_expert_q8x2, 1e-8)."""
    from types import SimpleNamespace

    from gguf import GGMLQuantizationType as Q

    from stories.foundation._cuda_conformance import product_op
    from worker.backend.cuda import product_path

    backend = SimpleNamespace(matvec_terms=terms, prefill_q8=q8)
    int8_terms = {"mmvq": terms, "mma": terms or 2}.get(path, 0)      # mma: two terms unless matvec_terms says one
    assert product_path(backend, fmt, T, N, K) == (path, int8_terms)
    qtype = Q[fmt.upper()]
    rows = {op: product_op(backend, op, qtype, T, N, K) for op in ("matvec", "matmul", "matmul_expert")}
    suffix = {"mmvq": "_q8x2" if terms == 2 else "", "mma": "_q8x2", "bf16": "_bf16x2"}.get(path, "")
    assert rows == {op: op + suffix for op in rows}
    assert all(row in THRESHOLDS for op, row in rows.items() if op != "matvec" or T <= 4)   # matvec: decode only


def test_an_unknown_path_is_refused():
    with pytest.raises(ValueError, match="M0_CUDA_PREFILL_Q8 must be one of"):
        mmq.uses_mma("int4", "q8_0", 128)


# -- mmq_bf16_q8_0: the same tiles on BF16 tensor cores ----------------------------------------------------------------

def _bf16(v: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even), as float64."""
    u = np.asarray(v, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32).astype(np.float64)


@pytest.mark.parametrize("T,N,n_blocks,splits,extreme", [
    (5, 1, 1, 1, False), (5, 1, 7, 2, False), (64, 64, 4, 1, True), (65, 129, 5, 1, False), (130, 70, 9, 1, False),
    (7, 200, 2, 1, True), (65, 129, 36, 3, False), (66, 70, 13, 8, False), (9, 40, 4, 3, False)])
def test_bf16_kernel_matches_the_reference(host_mmq, T, N, n_blocks, splits, extreme):
    """mmq_bf16_q8_0 (M0_CUDA_PREFILL_Q8=bf16) on the host: float32 activations split into two bfloat16 terms in the
    kernel, BF16 tensor-core products and no int8 ones, bias and residual, k split over blocks (uneven runs, empty
    ones); within matmul_bf16x2's bound of x @ W^T, which one bfloat16 term a value would miss by far."""
    rng = np.random.default_rng(7 * T + N + n_blocks + splits)
    K = 32 * n_blocks
    x = (rng.standard_normal((T, K)) * rng.choice([1e-3, 1.0, 300.0], (T, 1))).astype(np.float32)
    x[:, ::32] *= 1e3                          # a large value leading each block
    blocks = _q8_0_rows(rng, N, K, extreme=extreme)
    bias, residual = rng.standard_normal(N).astype(np.float32), rng.standard_normal((T, N)).astype(np.float32)
    k = HostBackend(host_mmq)
    raw = np.concatenate([blocks.reshape(-1), np.zeros(PAD, np.uint8)])
    partials = np.full(splits * T * N, np.nan, np.float32) if splits > 1 else None
    y = residual.copy()
    host_mmq.host_mma_bf16_count(), host_mmq.host_mma_s8_count()          # the counters from zero
    mmq.product_bf16(k, raw, blocks.shape[1], x, y, T, N, K, bias=bias, residual=y, splits=splits, partials=partials)
    grid = (-(-N // mmq.MMQ_BN), -(-T // mmq.MMQ_BM), splits)
    assert k.launched == [("mmq_bf16_q8_0", grid, mmq.MMQ_THREADS)] + (
        [("mmq_sum_splits", (elementwise_grid(T * N), 1, 1), 256)] if splits > 1 else [])
    assert host_mmq.host_mma_bf16_count() > 0 and host_mmq.host_mma_s8_count() == 0
    assert np.isfinite(y).all()
    dense = dequantized(blocks, N, K)
    start = bias.astype(np.float64) + residual.astype(np.float64)
    err = term_normalized(y, x.astype(np.float64) @ dense.T + start, x, dense)
    assert err <= THRESHOLDS["matmul_bf16x2"], f"term-normalized {err:.3e}"
    one_term = _bf16(x) @ dense.T + start     # the control: a single bfloat16 term a value
    assert term_normalized(one_term, x.astype(np.float64) @ dense.T + start, x, dense) > THRESHOLDS["matmul_bf16x2"]


def test_the_bf16_path_is_chosen_by_its_switch():
    assert mmq.uses_bf16("bf16", "q8_0") and not mmq.uses_bf16("bf16", "q4_k")
    assert not any(mmq.uses_bf16(path, "q8_0") for path in ("auto", "mma", "tf32x3"))
    assert not mmq.uses_mma("bf16", "q8_0", 128)

