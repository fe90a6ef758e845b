"""Launchers of matmul.cu: fused dequantize + matrix-vector product, row dequantization, prefill products.

Prefill products (T > MATVEC_MAX_T tokens, `prefill_product`) dequantize the weight tile by tile
into a bounded workspace and multiply with cuBLAS. The default path ("tf32x3", M0_CUDA_PREFILL)
runs on TF32 tensor cores in three terms: every operand v is split into hi = v rounded to TF32
(10 explicit mantissa bits) and lo = (v - hi) rounded to TF32, and

    y = x_hi W_hi^T + x_hi W_lo^T + x_lo W_hi^T      (float32 accumulation)

Each TF32 x TF32 product is exact in float32, so a product term x_k W_nk carries an error of at
most 2^-21 (1 + 2^-12) |x_k| |W_nk|: 2^-23 from rounding each lo part to TF32 (twice) and 2^-22
from the dropped x_lo W_lo^T; the float32 sums add what the float32 path's sums add
(stories/foundation/test_ft016_split_tf32_bound.py checks the bound on the CPU). Where every
weight value is a TF32 value already (TF32_EXACT_FORMATS) W_lo = 0: y = x_hi W^T + x_lo W^T.
"fp32" keeps the plain float32 cuBLAS product for comparison.

Per tile: one dequantization launch and two cublasGemmEx calls, [x_hi | x_hi] [W_hi | W_lo]^T (a
K-concatenation) then + x_lo W_hi^T with beta = 1; the input is split once for all its tiles and
for the next products of the same input.
"""
from __future__ import annotations

import os

import numpy as np

from worker.backend.cuda_runtime import NULL, CublasNT, elementwise_grid, i32, i64

MATVEC_MAX_T = 4                      # tokens one matvec launch handles: must match matmul.cu
MATVEC_ROWS_PER_BLOCK = 4             # one warp per output row
PREFILL_PATHS = ("tf32x3", "fp32")
# Formats whose every value is a TF32 value (W_lo = 0: a plain tile, two products): float16 and
# bfloat16 (10 and 7 mantissa bits), MXFP4 (a power of two times an E2M1 value), the ternary
# formats (an f16 scale times -1, 0 or 1). stories/foundation/test_ft016_split_tf32_bound.py checks the list.
TF32_EXACT_FORMATS = frozenset({"f16", "bf16", "mxfp4", "tq1_0", "tq2_0"})
SPLIT_INPUT = "prefill_split_input"   # workspace of the split activations [T, 3K]
TILE = "dequant_tile"                 # workspace of one weight tile
CUBLAS_WORKSPACE = "cublas_workspace"  # cuBLAS's own scratch (set once: none allocated in a capture)
CUBLAS_WORKSPACE_BYTES = 32 << 20     # what cuBLAS recommends for Hopper


MATVEC_MAX_PARTS = 8                  # warps a row at most (matmul.cu)
MATVEC_MIN_WARPS = 512                # a product's warps, where its rows allow: about 4 an SM of an H200


def matvec_parts(k, fmt: str, N: int, K: int) -> int:
    """Warps each of N rows of K values is split over: one for products of many rows; few rows (a
    router's 32) take several, each lane keeping at least one 8-value chunk, within the block size
    the compiled kernel allows (its registers bound it)."""
    parts = min(MATVEC_MAX_PARTS, -(-MATVEC_MIN_WARPS // max(1, N)), max(1, K // 256))
    if parts <= 1:
        return 1
    known = k.__dict__.setdefault("_matvec_max_threads", {})
    if fmt not in known:
        known[fmt] = int(getattr(k._fn("matmul.cu", f"matvec_{fmt}"), "max_threads_per_block", 1024))
    return max(1, min(parts, known[fmt] // (32 * MATVEC_ROWS_PER_BLOCK)))


# A prefill product of a wide weight of few rows (GPT-OSS's router: 32 rows of 2880) takes matvec too, a block row
# a group of MATVEC_MAX_T tokens, with float32 sums: one launch of a few microseconds, where prefill_product spends
# five (dequantization, input split, two cuBLAS products and cuBLAS's split-k reduction) on as little work, 25 us a
# GPT-OSS-20B layer at T = 128 (H200, ncu). The weight is read once a token group, hence the bound on T N K.
FEW_ROWS = 64                         # at most this many rows,
FEW_ROWS_WIDTH = 16                   # each at least this many times as long as the weight has rows,
FEW_ROWS_MAX_WORK = 1 << 26           # and T N K at most this


def few_rows(N: int, K: int, T: int) -> bool:
    """Whether a product of T tokens on an [N, K] weight takes matvec however many tokens it has."""
    return N <= FEW_ROWS and K >= FEW_ROWS_WIDTH * N and T * N * K <= FEW_ROWS_MAX_WORK


def matvec(k, w, raw, x, bias, y, N: int, K: int, T: int) -> None:
    """y[t, n] = x[t] . W[n] (+ bias[n]) for t < T (groups of MATVEC_MAX_T tokens, a grid row each); raw: the
    weight's (expert's) bytes."""
    parts = matvec_parts(k, w.format, N, K)
    k._launch("matmul.cu", f"matvec_{w.format}",
              ((N + MATVEC_ROWS_PER_BLOCK - 1) // MATVEC_ROWS_PER_BLOCK, (T + MATVEC_MAX_T - 1) // MATVEC_MAX_T),
              32 * MATVEC_ROWS_PER_BLOCK * parts,
              (raw, i64(w.row_bytes), x, bias, y, i32(N), i32(K), i32(T), i32(parts)))


def _chunks(n_rows: int, K: int) -> int:
    """Threads of a dequantization launch (one per 8-value chunk): the kernels index them in 32 bits."""
    total = n_rows * (K // 8 + K % 8)
    if total >= 1 << 31:
        raise ValueError(f"dequantizing {n_rows} rows of {K} values at once exceeds the kernels' 32-bit index")
    return total


def dequant_rows(k, w, raw, ids, first_row: int, out, n_rows: int, K: int) -> None:
    """out[i] = W[ids[i] if ids else first_row + i] as float32, for i < n_rows."""
    total = _chunks(n_rows, K)
    if total:
        k._launch("matmul.cu", f"dequant_rows_{w.format}", (total + 255) // 256, 256,
                  (raw, i64(w.row_bytes), ids, i64(first_row), out, i32(n_rows), i32(K)))


def dequant_split_rows(k, w, raw, first_row: int, out, n_rows: int, K: int) -> None:
    """out[i] = [hi(W[first_row + i]) | lo(W[first_row + i])] (row stride 2K), for i < n_rows."""
    total = _chunks(n_rows, K)
    if total:
        k._launch("matmul.cu", f"dequant_split_rows_{w.format}", (total + 255) // 256, 256,
                  (raw, i64(w.row_bytes), i64(first_row), out, i32(n_rows), i32(K)))


def split_input(k, x, xs, T: int, K: int) -> None:
    """xs[t] = [hi(x[t]) | hi(x[t]) | lo(x[t])] (row stride 3K) for x [T, K]."""
    if T * K:
        k._launch("matmul.cu", "split_tf32_rows", elementwise_grid(T * K), 256, (x, xs, i32(T), i32(K)))


def bias_residual_init(k, y, bias, residual, T: int, N: int) -> None:
    """y[t, n] = residual[t, n] + bias[n] (None: 0); residual may be y itself."""
    k._launch("matmul.cu", "bias_residual_init", elementwise_grid(T * N), 256,
              (y, NULL if bias is None else bias, NULL if residual is None else residual, i32(T), i32(N)))


def add_bias_residual(k, y, bias, residual, T: int, N: int) -> None:
    """y[t, n] += bias[n] + residual[t, n] in one launch (either None: left out)."""
    k._launch("matmul.cu", "add_bias_residual", elementwise_grid(T * N), 256,
              (y, NULL if bias is None else bias, NULL if residual is None else residual, i32(T), i32(N)))


# -- prefill products ------------------------------------------------------------------------------

class PrefillProducts:
    """A backend's prefill product state: the path, its cuBLAS handle, and which input the split
    activations hold (the q, k, v products of one normed input, gate and up, split it once)."""

    def __init__(self, k, path: str | None = None, blas=None):
        path = path or os.environ.get("M0_CUDA_PREFILL", "tf32x3")
        if path not in PREFILL_PATHS:
            raise ValueError(f"M0_CUDA_PREFILL must be one of {PREFILL_PATHS}, got {path!r}")
        self.path = path
        if blas is None:                # cuBLAS gets a workspace of ours: no allocation inside a captured graph
            blas = CublasNT(k.cp)
            blas.set_workspace(workspace_ptr(k, CUBLAS_WORKSPACE, CUBLAS_WORKSPACE_BYTES // 4), CUBLAS_WORKSPACE_BYTES)
        self.blas = blas
        self.split_of = None          # (x ptr, (T, K), workspace buffer, launch serial, stream) after a product
        self.split_input_held = None  # the input itself: its memory cannot be reused while it is named

    def split_ptr(self, k, x2, T: int, K: int) -> int:
        """The device address of x2 split into [hi | hi | lo] rows: split now, or still there from the
        last product when x2 is the same memory and no kernel that may write it has run since."""
        buf, last = k._workspace.get(SPLIT_INPUT), self.split_of
        if last is not None and last[2] is buf and last[:2] == (x2.data.ptr, (T, K)) \
                and last[3:] == (k.launch_serial, self.blas._stream):
            k.graphs.hold(buf)
            return buf.data.ptr
        xs = workspace_ptr(k, SPLIT_INPUT, 3 * T * K)
        split_input(k, x2, np.uint64(xs), T, K)
        return xs


def prefill_products(k) -> PrefillProducts:
    """The backend's PrefillProducts (made on first use; `.path` may be switched for comparisons)."""
    state = k.__dict__.get("_prefill_products")
    if state is None:
        state = k._prefill_products = PrefillProducts(k)
    return state


def workspace_ptr(k, name: str, n_floats: int) -> int:
    """The device address of persistent workspace `name` of at least n_floats float32 (as k._scratch)."""
    buf = k._workspace.get(name)
    if buf is None or buf.size < n_floats:
        k._scratch(name, n_floats)
        buf = k._workspace[name]
    else:
        k.graphs.hold(buf)
    return buf.data.ptr


def prefill_product(k, w, raw, x2, y, bias=None, residual=None, *, tile_bytes: int) -> None:
    """y = x2 @ W^T (+ bias[n]) (+ residual[t, n]) for x2 [T, K], y [T, N] (C-contiguous float32).

    W (raw: the weight's or expert's bytes) is dequantized tile by tile into a workspace of at
    most tile_bytes (one row at least), and each tile multiplied into its column block of y by
    cuBLAS. Bias and residual are y's start value, which the products accumulate onto (beta = 1):
    one launch, none for a residual that is y itself without bias. No host synchronization, no
    allocation beyond the grown-once workspace: a CUDA graph can capture it.
    """
    state = k.__dict__.get("_prefill_products") or prefill_products(k)
    (T, K), N = x2.shape, y.shape[1]
    if not (T and N):
        return
    blas = state.blas
    blas.on_current_stream()
    y0, x0 = y.data.ptr, x2.data.ptr
    start = bias is not None or (residual is not None and residual.data.ptr != y0)
    if start:
        bias_residual_init(k, y, bias, residual, T, N)
    accumulate = start or residual is not None
    gemm = blas.gemm
    tf32 = state.path == "tf32x3"
    exact = w.format in TF32_EXACT_FORMATS
    if tf32:
        xs = state.split_ptr(k, x2, T, K)
        xs_lo = xs + 8 * K                            # the lo third of each [hi | hi | lo] row
    per_row = K if exact or not tf32 else 2 * K   # floats a tile row holds
    rows = max(1, min(N, tile_bytes // (4 * per_row))) if per_row else N
    tile = workspace_ptr(k, TILE, rows * per_row)
    tile_arg = np.uint64(tile)
    for n0 in range(0, N, rows):
        n = min(rows, N - n0)
        yn = y0 + 4 * n0
        if not tf32:
            dequant_rows(k, w, raw, NULL, n0, tile_arg, n, K)
            gemm(yn, N, x0, K, tile, K, T, n, K, accumulate=accumulate)
        elif exact:                                   # W holds TF32 values: x_hi W^T + x_lo W^T
            dequant_rows(k, w, raw, NULL, n0, tile_arg, n, K)
            gemm(yn, N, xs, 3 * K, tile, K, T, n, K, accumulate=accumulate, tf32=True)
            gemm(yn, N, xs_lo, 3 * K, tile, K, T, n, K, accumulate=True, tf32=True)
        else:                                         # [x_hi | x_hi] [W_hi | W_lo]^T, then + x_lo W_hi^T
            dequant_split_rows(k, w, raw, n0, tile_arg, n, K)
            gemm(yn, N, xs, 3 * K, tile, 2 * K, T, n, 2 * K, accumulate=accumulate, tf32=True)
            gemm(yn, N, xs_lo, 3 * K, tile, 2 * K, T, n, K, accumulate=True, tf32=True)
    k.launch_serial += 1                              # cuBLAS wrote y outside k._launch
    if k.sync_each_op:
        k.synchronize()
    overlaps = y0 < x0 + 4 * T * K and x0 < y0 + 4 * T * N
    if tf32 and not overlaps:
        state.split_of = (x0, (T, K), k._workspace.get(SPLIT_INPUT), k.launch_serial, blas._stream)
        state.split_input_held = x2
