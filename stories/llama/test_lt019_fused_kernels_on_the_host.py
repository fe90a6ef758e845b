"""LT-019 fused decode kernels without a GPU: vecdot.cu, norm.cu and elementwise.cu compiled for the host
by the system C++ compiler, each CUDA thread of a block run as a host fiber (__syncthreads and the warp
shuffles are barriers over shared slots, as in test_lt016_attention_kernels_on_the_host.py; blocks run
one after another in a shuffled order), launched through the backend's own launchers
(kernels/vecdot.py, norm.py, elementwise.py) so that their grids, block sizes and argument order are
checked as well.

  * mmvq_<fmt> with a residual: r + (its product without one), bit for bit;
  * mmvq_segments: each segment equals mmvq_<fmt> of its weight alone, bit for bit, formats mixed;
  * mmvq_swiglu_<fmt>: equals swiglu_q8 of the two products (values and int8 blocks), bit for bit;
  * rows longer than 2048 values (K = 2880, GPT-OSS; K = 4864, Qwen2.5's ffn_down) split over several warps
    (vecdot.py's mmvq_parts): the split changes the order of a row's sum, so these rows are held to the
    reference by matvec_q8x2's term-normalized NMSE (1e-8, as one-warp rows), and the fused kernels
    still equal mmvq_<fmt> of the same K bit for bit (every kernel folds a row's parts in one order);
  * rmsnorm_q8 (and rmsnorm_q8_wide): within rmsnorm's 1e-10 of the NumPy reference, and its int8
    blocks equal quantize_q8 of its output byte for byte.
The GPU runs the same checks in test_lt019_fused_decode_ops.py. Skipped where g++ or cpp is missing.
"""
from __future__ import annotations

import ctypes
import shutil

import gguf
import numpy as np
import pytest

from fixtures.gguf_corrupt import random_blocks
from fixtures.paths import REPO_ROOT
from stories.foundation._cuda_conformance import THRESHOLDS, nmse
from stories.llama._host_cuda import (
    THREADED_LAUNCH,
    THREADED_PRELUDE,
    build_host_library,
    device_function,
    host_entries,
    kernel_body,
)
from worker.backend.cuda_runtime import NULL, kernel_source
from worker.backend.kernels import elementwise, norm, vecdot
from worker.backend.numpy import NumpyBackend
from worker.quant import FORMATS

pytestmark = [pytest.mark.story("LT-019"),
              pytest.mark.skipif(shutil.which("g++") is None or shutil.which("cpp") is None,
                                 reason="g++ and cpp are needed to build the kernels for the host")]

Q = gguf.GGMLQuantizationType
KERNELS = REPO_ROOT / "worker" / "backend" / "kernels"
SOURCES = ("vecdot.cu", "norm.cu", "elementwise.cu")
REF = NumpyBackend()
PAD = 16                      # worker/backend/cuda_memory.py's WEIGHT_TAIL_PAD

_PRELUDE = THREADED_PRELUDE + r"""
static inline double __shfl_xor_sync(unsigned, double v, int o) { return shuffle_from(v, (threadIdx.x % 32) ^ o); }
"""


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    def body(name):
        return kernel_body(KERNELS / name)

    helpers = "".join(device_function(KERNELS / "common.cuh", n) for n in ("warp_sum", "warp_max", "warp_sum_d",
                                                                      "block_sum_d"))
    text = (_PRELUDE + helpers + body("vecdot.cuh") + body("activation.cuh") + THREADED_LAUNCH
            + "".join(body(s) for s in SOURCES) + "".join(host_entries(kernel_source(m)) for m in SOURCES))
    return build_host_library(text, tmp_path_factory.mktemp("fused"), "fused_host", timeout=900)


class HostBackend:
    """Just enough of a CudaBackend for the launchers: `_launch` runs the host build of the kernel."""

    def __init__(self, lib, seed: int = 0):
        self.lib, self.seed, self.launched = lib, seed, []

    def _launch(self, module, name, grid, block, args, *, keeps_quantized_input: bool = False) -> None:
        gx, gy = (grid + (1,))[:2] if isinstance(grid, tuple) else (grid, 1)
        self.launched.append(name)
        self.seed += 1
        getattr(self.lib, f"host_{name}")(ctypes.c_uint(int(gx)), ctypes.c_uint(int(gy)), ctypes.c_uint(int(block)),
                                          ctypes.c_uint(self.seed), *(_c(a) for a in args))


def _c(a):
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if a is NULL or (isinstance(a, np.uint64) and int(a) == 0):
        return ctypes.c_void_p(0)
    return {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float32: ctypes.c_float}[type(a)](a)


def _swiglu_kernel(fmt: str) -> str:
    """The mmvq_swiglu instance the launcher takes for a format (two blocks an SM or one: the same sums)."""
    return f"mmvq_swiglu_x2_{fmt}" if fmt in vecdot.MMVQ_SWIGLU_X2 else f"mmvq_swiglu_{fmt}"


def _weight(qtype, N: int, K: int, rng):
    """(stored bytes with the tail pad, bytes per row, dense float64 [N, K])."""
    block = FORMATS[qtype].block_size
    blocks = random_blocks(qtype, N * K // block, rng)
    raw = np.ascontiguousarray(blocks).reshape(-1).view(np.uint8)
    dense = np.asarray(gguf.quants.dequantize(blocks.copy(), qtype), np.float64).reshape(N, K)
    return np.concatenate([raw, np.zeros(PAD, np.uint8)]), raw.size // N, dense


def _quantized(k, x: np.ndarray, terms: int = 2):
    T, K = x.shape
    xq, xds = np.zeros(2 * T * K, np.int8), np.zeros((T, K // 32, 4), np.float32)
    vecdot.quantize(k, np.ascontiguousarray(x, np.float32), xq, xds, T, K, terms)
    return xq, xds


def _mmvq(k, qtype, raw, row_bytes, xq, xds, N, K, T, bias=None, residual=None):
    y = np.full((T, N), np.nan, np.float32)
    vecdot.mmvq(k, FORMATS[qtype].kernel, raw, row_bytes, xq, xds, y, N, K, T, 2, bias=bias, residual=residual)
    return y


INT8_FORMATS = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.MXFP4, Q.Q4_K, Q.Q5_K, Q.Q6_K]


@pytest.mark.parametrize("qtype", INT8_FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("T", [1, 3])
def test_the_residual_is_added_to_the_finished_product(host_kernels, qtype, T):
    """(T = 1 takes the kernels' one-token walk, T and terms known to the compiler; T = 3 the general one.)"""
    rng = np.random.default_rng(int(qtype) + T)
    N, K = 9, 512
    raw, row_bytes, _ = _weight(qtype, N, K, rng)
    k = HostBackend(host_kernels)
    xq, xds = _quantized(k, rng.standard_normal((T, K)).astype(np.float32))
    bias = rng.standard_normal(N).astype(np.float32)
    r = rng.standard_normal((T, N)).astype(np.float32) * 5
    plain = _mmvq(k, qtype, raw, row_bytes, xq, xds, N, K, T, bias=bias)
    fused = _mmvq(k, qtype, raw, row_bytes, xq, xds, N, K, T, bias=bias, residual=r)
    np.testing.assert_array_equal(fused, r + plain)


@pytest.mark.parametrize("formats", [(Q.Q4_K, Q.Q4_K, Q.Q6_K), (Q.Q8_0, Q.MXFP4, Q.Q4_1), (Q.Q5_0, Q.Q5_K)],
                         ids=lambda f: "-".join(q.name for q in f))
@pytest.mark.parametrize("T", [1, 4])
def test_segments_equal_each_product_alone(host_kernels, formats, T):
    rng = np.random.default_rng(len(formats) * 10 + T)
    K = 512
    sizes = [13, 6, 5][:len(formats)]
    k = HostBackend(host_kernels)
    x = rng.standard_normal((T, K)).astype(np.float32)
    xq, xds = _quantized(k, x)
    weights = [_weight(q, n, K, rng) for q, n in zip(formats, sizes)]
    biases = [rng.standard_normal(n).astype(np.float32) if j != 1 else None for j, n in enumerate(sizes)]
    ys = [np.full((T, n), np.nan, np.float32) for n in sizes]
    k.launched.clear()
    vecdot.mmvq_segments(k, xq, xds, K, T, 2, [(FORMATS[q].kernel, raw, rb, n, b, y) for q, (raw, rb, _), n, b, y
                                               in zip(formats, weights, sizes, biases, ys)])
    assert k.launched == ["mmvq_segments"]
    for q, (raw, rb, dense), n, b, y in zip(formats, weights, sizes, biases, ys):
        np.testing.assert_array_equal(y, _mmvq(k, q, raw, rb, xq, xds, n, K, T, bias=b))
        ref = x.astype(np.float64) @ dense.T + (0 if b is None else b)
        scale = np.abs(x.astype(np.float64)) @ np.abs(dense).T
        assert np.sum((y - ref) ** 2) / np.sum(scale ** 2) <= THRESHOLDS["matvec_q8x2"]


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q4_K, Q.Q6_K, Q.MXFP4], ids=lambda q: q.name)
@pytest.mark.parametrize("T", [1, 3])
def test_swiglu_of_the_products_in_one_launch(host_kernels, qtype, T):
    rng = np.random.default_rng(int(qtype) + T)
    F, K = 64, 256
    k = HostBackend(host_kernels)
    xq, xds = _quantized(k, rng.standard_normal((T, K)).astype(np.float32) * 2)
    y, g, u, launches = _swiglu_equals_the_unfused_ops(k, qtype, xq, xds, F, K, T, rng)
    assert launches == [_swiglu_kernel(FORMATS[qtype].kernel)]
    assert nmse(y, REF.swiglu(g, u)) <= THRESHOLDS["swiglu"]


def _swiglu_equals_the_unfused_ops(k, qtype, xq, xds, F: int, K: int, T: int, rng):
    """mmvq_swiglu of random gate/up weights equals swiglu_q8 of the two mmvq products, values and int8
    blocks bit for bit; returns (its output, gate, up, the launches mmvq_swiglu made)."""
    (graw, rb, _), (uraw, _, _) = _weight(qtype, F, K, rng), _weight(qtype, F, K, rng)
    y, yq, yds = np.full((T, F), np.nan, np.float32), np.zeros(2 * T * F, np.int8), np.zeros((T, F // 32, 4), "f4")
    before = len(k.launched)
    vecdot.mmvq_swiglu(k, FORMATS[qtype].kernel, graw, uraw, rb, xq, xds, y, yq, yds, F, K, T, 2)
    launches = k.launched[before:]
    g, u = (_mmvq(k, qtype, raw, rb, xq, xds, F, K, T) for raw in (graw, uraw))
    want, wq, wds = np.full((T, F), np.nan, np.float32), np.zeros(2 * T * F, np.int8), np.zeros_like(yds)
    elementwise.swiglu_q8(k, g, u, want, wq, wds, 2, T * F)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(yq, wq)
    np.testing.assert_array_equal(yds, wds)
    return y, g, u, launches


@pytest.mark.parametrize("D", [32, 576, 1056, 2880, 8224])
@pytest.mark.parametrize("T", [1, 2])
def test_rmsnorm_q8_matches_the_reference_and_quantize(host_kernels, D, T):
    rng = np.random.default_rng(D + T)
    x = (rng.standard_normal((T, D)) * 30).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(D)).astype(np.float32)
    k = HostBackend(host_kernels)
    y, xq, xds = np.full((T, D), np.nan, np.float32), np.zeros(2 * T * D, np.int8), np.zeros((T, D // 32, 4), "f4")
    norm.rmsnorm_q8(k, x, w, y, xq, xds, 2, T, D, 1e-5)
    assert k.launched == ["rmsnorm_q8" if D <= norm.RMSNORM_Q8_MAX_D else "rmsnorm_q8_wide"]
    assert nmse(y, REF.rmsnorm(x, w, 1e-5)) <= THRESHOLDS["rmsnorm"]
    wq, wds = _quantized(k, y)
    np.testing.assert_array_equal(xq, wq)
    np.testing.assert_array_equal(xds, wds)


@pytest.mark.parametrize("D,kernel", [(2880, "rmsnorm_q8"), (576, "rmsnorm_q8"), (8224, "rmsnorm"), (100, "rmsnorm")])
def test_rmsnorm_of_many_rows_keeps_rows_in_registers_where_they_fit(host_kernels, D, kernel):
    """norm.rmsnorm (a prefill's norm, any row count): rows of 32-value blocks that rmsnorm_q8 keeps in registers
    take it with no int8 output (terms = 0: nothing else written), the others the two-pass rmsnorm."""
    T = 9
    rng = np.random.default_rng(D)
    x = (rng.standard_normal((T, D)) * 30).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(D)).astype(np.float32)
    k = HostBackend(host_kernels)
    y = np.full((T, D), np.nan, np.float32)
    norm.rmsnorm(k, x, w, y, T, D, 1e-5)
    assert k.launched == [kernel]
    assert nmse(y, REF.rmsnorm(x, w, 1e-5)) <= THRESHOLDS["rmsnorm"]


def _term_nmse(y, x, dense, bias=None):
    """NMSE of y against x @ dense.T (+ bias), normalized by |x| @ |dense|.T (the size of the terms summed)."""
    ref = x.astype(np.float64) @ dense.T + (0 if bias is None else bias)
    scale = np.abs(x.astype(np.float64)) @ np.abs(dense).T
    return np.sum((y - ref) ** 2) / np.sum(scale ** 2)


LONG_ROWS = [(Q.Q4_K, 4864, 1), (Q.Q6_K, 4864, 1), (Q.Q5_0, 4864, 2), (Q.MXFP4, 2880, 1), (Q.Q8_0, 2880, 2),
             (Q.Q4_1, 2048 + 32, 1), (Q.Q5_K, 8192 + 256, 1)]


@pytest.mark.parametrize("qtype,K,T", LONG_ROWS, ids=lambda v: getattr(v, "name", str(v)))
def test_long_rows_split_over_warps(host_kernels, monkeypatch, qtype, K, T):
    """A row split over several warps (no lane walks more than two 32-value blocks; here from 64 blocks on, as
    M0_CUDA_MMVQ_ONE_WARP_BLOCKS=0 asks), their sums folded in shared memory: the product stays within
    matvec_q8x2 of the float product (its sum order changed), and the residual epilogue and the segments
    launch agree with it bit for bit."""
    monkeypatch.setattr(vecdot, "MMVQ_ONE_WARP_BLOCKS", 0)
    rng = np.random.default_rng(K + int(qtype))
    N = 9
    parts = vecdot.mmvq_parts(K)
    assert parts == min(vecdot.MMVQ_MAX_PARTS, -(-(K // 32) // 64)) > 1
    raw, row_bytes, dense = _weight(qtype, N, K, rng)
    k = HostBackend(host_kernels)
    x = rng.standard_normal((T, K)).astype(np.float32)
    xq, xds = _quantized(k, x)
    bias = rng.standard_normal(N).astype(np.float32)
    calls = []
    k._launch, launch = (lambda *a, **kw: (calls.append(a[3]), launch(*a, **kw))), k._launch
    y = _mmvq(k, qtype, raw, row_bytes, xq, xds, N, K, T, bias=bias)
    assert calls == [32 * vecdot.MMVQ_ROWS_PER_BLOCK * parts]
    assert _term_nmse(y, x, dense, bias) <= THRESHOLDS["matvec_q8x2"]
    r = rng.standard_normal((T, N)).astype(np.float32)
    np.testing.assert_array_equal(_mmvq(k, qtype, raw, row_bytes, xq, xds, N, K, T, bias=bias, residual=r), r + y)
    other = _weight(Q.Q8_0, 5, K, rng)
    ys = [np.full((T, N), np.nan, np.float32), np.full((T, 5), np.nan, np.float32)]
    vecdot.mmvq_segments(k, xq, xds, K, T, 2, [(FORMATS[qtype].kernel, raw, row_bytes, N, bias, ys[0]),
                                               ("q8_0", other[0], other[1], 5, None, ys[1])])
    np.testing.assert_array_equal(ys[0], y)
    np.testing.assert_array_equal(ys[1], _mmvq(k, Q.Q8_0, other[0], other[1], xq, xds, 5, K, T))


@pytest.mark.parametrize("K, parts", [(896, 1), (2048 + 32, 1), (2880, 1), (4096, 1), (4096 + 32, 3), (4864, 3),
                                      (8192, 4), (16384, 4)])
def test_rows_up_to_128_blocks_stay_on_one_warp(monkeypatch, K, parts):
    """GPT-OSS's K = 2880 and 4096 measured faster on one warp a row, Qwen2.5's K = 4864 split over 3
    (vecdot.py's defaults, set here so that an M0_CUDA_MMVQ_* comparison run leaves this test as it is)."""
    monkeypatch.setattr(vecdot, "MMVQ_ONE_WARP_BLOCKS", 128)
    monkeypatch.setattr(vecdot, "MMVQ_LANE_BLOCKS", 64)
    assert vecdot.mmvq_parts(K) == parts


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_0, Q.Q6_K], ids=lambda q: q.name)
def test_swiglu_of_long_rows_equals_the_split_products(host_kernels, qtype):
    """mmvq_swiglu walks a long row's parts one after another in one warp, and folds them as mmvq does."""
    rng = np.random.default_rng(7 + int(qtype))
    F, K, T = 32, 4864, 1
    k = HostBackend(host_kernels)
    xq, xds = _quantized(k, rng.standard_normal((T, K)).astype(np.float32))
    _swiglu_equals_the_unfused_ops(k, qtype, xq, xds, F, K, T, rng)


@pytest.mark.parametrize("qtype", INT8_FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("terms", [1, 2])
def test_the_one_token_walk_equals_the_general_one(host_kernels, qtype, terms):
    """T = 1 runs a copy of the walk with T and terms constant (its loads issued together): the same sums as the
    general walk gives token 0 of two."""
    rng = np.random.default_rng(int(qtype) * 3 + terms)
    N, K = 6, 2048 + 256
    raw, row_bytes, _ = _weight(qtype, N, K, rng)
    k = HostBackend(host_kernels)
    x = rng.standard_normal((2, K)).astype(np.float32)
    ys = []
    for T in (1, 2):
        xq, xds = _quantized(k, x[:T], terms)
        y = np.full((T, N), np.nan, np.float32)
        vecdot.mmvq(k, FORMATS[qtype].kernel, raw, row_bytes, xq, xds, y, N, K, T, terms)
        ys.append(y)
    np.testing.assert_array_equal(ys[0][0], ys[1][0])


@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("clamped", [False, True])
def test_expert_slots_swiglu_in_one_launch(host_kernels, qtype, clamped):
    """A MoE token's chosen experts (GPT-OSS): gate and up of each chosen expert with its biases, the (clamped)
    SwiGLU and the down product's int8 input in one mmvq_swiglu launch, equal to the two slot products, then
    swiglu_q8, bit for bit (values and blocks)."""
    rng = np.random.default_rng(11 + int(qtype) + clamped)
    E, F, K, n_used = 5, 64, 2880, 3
    k = HostBackend(host_kernels)
    xq, xds = _quantized(k, rng.standard_normal((1, K)).astype(np.float32))
    (graw, rb, _), (uraw, _, _) = _weight(qtype, E * F, K, rng), _weight(qtype, E * F, K, rng)
    bg, bu = (rng.standard_normal(E * F).astype(np.float32) for _ in range(2))
    experts = np.array([3, 0, 4], np.int32)
    limit, alpha = (7.0, 1.702) if clamped else (None, None)
    h, hq = np.full((n_used, F), np.nan, np.float32), np.zeros(2 * n_used * F, np.int8)
    hds = np.zeros((n_used, F // 32, 4), "f4")
    k.launched.clear()
    vecdot.mmvq_swiglu(k, FORMATS[qtype].kernel, graw, uraw, rb, xq, xds, h, hq, hds, F, K, 1, 2, slots=n_used,
                       expert_ids=experts, expert_bytes=F * rb, bias_gate=bg, bias_up=bu, clamped=clamped,
                       limit=limit, alpha=alpha)
    assert k.launched == [_swiglu_kernel(FORMATS[qtype].kernel)]
    g, u = (np.full((n_used, F), np.nan, np.float32) for _ in range(2))
    for raw, b, y in ((graw, bg, g), (uraw, bu, u)):
        vecdot.mmvq(k, FORMATS[qtype].kernel, raw, rb, xq, xds, y, F, K, 1, 2, bias=b, bias_per_expert=True,
                    slots=n_used, expert_ids=experts, expert_bytes=F * rb)
    want, wq, wds = np.full((n_used, F), np.nan, np.float32), np.zeros_like(hq), np.zeros_like(hds)
    elementwise.swiglu_q8(k, g, u, want, wq, wds, 2, n_used * F, clamped, limit, alpha)
    np.testing.assert_array_equal(h, want)
    np.testing.assert_array_equal(hq, wq)
    np.testing.assert_array_equal(hds, wds)


@pytest.mark.parametrize("qtype", [q for q in INT8_FORMATS if FORMATS[q].kernel in vecdot.MMVQ_JOINT_ROWS],
                         ids=lambda q: q.name)
@pytest.mark.parametrize("T,terms", [(1, 2), (1, 1), (3, 2)])
def test_rows_walked_together_equal_one_row_a_warp(host_kernels, monkeypatch, qtype, T, terms):
    """mmvq_joint_<fmt> (a warp walks several rows together: products of many rows, such as the output
    product) gives each row mmvq_<fmt>'s sum: bias, residual and expert slots included, N not a multiple
    of the rows a warp."""
    rng = np.random.default_rng(int(qtype) * 7 + T + terms)
    E, N, K, slots = 3, 13, 2048, 2
    raw, row_bytes, _ = _weight(qtype, E * N, K, rng)
    k = HostBackend(host_kernels)
    xq, xds = _quantized(k, rng.standard_normal((T, K)).astype(np.float32), terms)
    bias = rng.standard_normal(E * N).astype(np.float32)
    r = rng.standard_normal((slots, T, N)).astype(np.float32)
    experts = np.array([2, 0], np.int32)
    ys = []
    for min_n in (10 ** 9, 1):
        monkeypatch.setattr(vecdot, "MMVQ_JOINT_MIN_N", min_n)
        y = np.full((slots, T, N), np.nan, np.float32)
        k.launched.clear()
        vecdot.mmvq(k, FORMATS[qtype].kernel, raw, row_bytes, xq, xds, y, N, K, T, terms, bias=bias,
                    bias_per_expert=True, slots=slots, expert_ids=experts, expert_bytes=N * row_bytes, residual=r)
        assert k.launched == [f"mmvq_{'joint_' if min_n == 1 else ''}{FORMATS[qtype].kernel}"]
        ys.append(y)
    np.testing.assert_array_equal(ys[0], ys[1])
