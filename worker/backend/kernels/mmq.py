"""Launcher of mmq.cu: prefill products (T > MATVEC_MAX_T tokens) of Q8_0 weights on int8 tensor cores.

    xq, xds = vecdot.quantized_input(k, x, x2, T, K, terms)      # the decode products' int8 activations
    product(k, raw, w.row_bytes, xq, xds, y, T, N, K, terms, bias=b)   # residual=r: y = r + (x W^T + b)

The activations are vecdot.cu's quantize_q8 blocks (one or two int8 terms a value); each 32-wide k block's int8
products sum exactly in int32 on the tensor cores (mma.sync m16n8k32), then are scaled by the weight block's
and the activation term's scales in float32. With two terms the error is the decode products' (conformance row
matmul_q8x2, the threshold of matvec_q8x2). M0_CUDA_PREFILL_Q8 picks the path of Q8_0 prefill products
(CudaBackend, uses_mma): "auto" (the default: this kernel up to MMQ_AUTO_MAX_T tokens), "tf32x3"
(matmul.prefill_product), "mma" (this kernel at every T) or "bf16" (mmq_bf16_q8_0 at every T:

    product_bf16(k, raw, w.row_bytes, x, y, T, N, K, bias=b)     # x float32 [T, K], split in the kernel

the same tiles on BF16 tensor cores, the activations two bfloat16 terms, conformance row matmul_bf16x2; slower on
the H200, so not the default: GPT-OSS-20B's four attention products a layer took 235 against 140 us at T = 128 and
752 against 419 at 512, benchmarks/bench_int8_prefill.py, one run).
"""
from __future__ import annotations

import os

import numpy as np

from worker.backend.cuda_runtime import NULL, elementwise_grid, i32, i64
from worker.backend.kernels.matmul import workspace_ptr

MMQ_FORMATS = frozenset({"q8_0"})     # formats with an mmq kernel (mmq_q8_0)
PREFILL_Q8_PATHS = ("auto", "tf32x3", "mma", "bf16")  # M0_CUDA_PREFILL_Q8
# "auto" (the default): this kernel for products of at most MMQ_AUTO_MAX_T tokens, tf32x3 above. Measured on the H200
# (benchmarks/bench_int8_prefill.py, GPT-OSS-20B's four attention products a layer, CUDA-graph replays): 140 / 420 /
# 1,498 us against tf32x3's 325 / 501 / 1,177 us at T = 128 / 512 / 2048 (mma's tiles reach ~150 of the int8 tensor
# cores' TOPS, cuBLAS's TF32 products gain more from a long prompt); the two lines cross near T = 800. The whole
# GPT-OSS-20B-shaped model's prefill: 23.2 against 28.1 ms at 128 tokens, 68.4 against 71.5 ms at 512.
MMQ_AUTO_MAX_T = 768
MMQ_BM = 64                           # tokens a block: must match mmq.cu
MMQ_BN = 64                           # weight rows a block: must match mmq.cu
MMQ_THREADS = 256                     # 8 warps: must match mmq.cu
MMQ_KB = 4                            # 32-value k blocks a stage: must match mmq.cu
QUANT_BLOCK = 32
# A product of fewer tiles than MMQ_MIN_BLOCKS (two blocks an SM of an H200's 132) splits its k stages over up to
# MMQ_MAX_SPLITS blocks a tile (GPT-OSS's k and v products at T = 128: 16 tiles), at least MMQ_MIN_SPLIT_STAGES
# stages a split; the partial sums go to a workspace and mmq_sum_splits adds them in order (deterministic). Summing
# them in each tile's last block instead (an atomic ticket, no second launch) was slower on the H200: mmq_q8_0 took
# 4,193 us of GPT-OSS-20B's 128-token prefill against 3,142 + 344 for the two kernels (ncu): that block's serial sum
# of 64 x 64 outputs over up to 8 splits outlasts the launch it saves.
# M0_CUDA_MMQ_SPLITS: a fixed split count instead (1: never split), to compare on the GPU.
MMQ_MIN_BLOCKS = 264
MMQ_MAX_SPLITS = 8
MMQ_MIN_SPLIT_STAGES = 2
MMQ_SPLITS = int(os.environ.get("M0_CUDA_MMQ_SPLITS", "0"))
PARTIALS = "mmq_partials"             # workspace of the split products' partial sums


def uses_mma(path: str, fmt: str, T: int) -> bool:
    """Whether a prefill product of T tokens on `fmt` weights takes this kernel under M0_CUDA_PREFILL_Q8=path."""
    if path not in PREFILL_Q8_PATHS:
        raise ValueError(f"M0_CUDA_PREFILL_Q8 must be one of {PREFILL_Q8_PATHS}, got {path!r}")
    return fmt in MMQ_FORMATS and (path == "mma" or (path == "auto" and T <= MMQ_AUTO_MAX_T))


def uses_bf16(path: str, fmt: str) -> bool:
    """Whether a prefill product on `fmt` weights takes mmq_bf16_q8_0 under M0_CUDA_PREFILL_Q8=path."""
    return path == "bf16" and fmt in MMQ_FORMATS


def k_splits(T: int, N: int, K: int) -> int:
    """Blocks a (token, weight row) tile's k stages are split over: 1 where the tiles alone fill the GPU."""
    if MMQ_SPLITS > 0:
        return MMQ_SPLITS
    tiles = -(-N // MMQ_BN) * -(-T // MMQ_BM)
    stages = -(-(K // QUANT_BLOCK) // MMQ_KB)
    return max(1, min(MMQ_MIN_BLOCKS // tiles, MMQ_MAX_SPLITS, stages // MMQ_MIN_SPLIT_STAGES))


def _tiles(k, fmt: str, T: int, N: int, K: int, splits: int | None, partials, bias, residual):
    """(grid, splits, bias, residual, partials) of a product's launch, NULL for what it lacks; None: nothing to do."""
    if fmt not in MMQ_FORMATS:
        raise ValueError(f"mmq has no kernel for {fmt!r} (only {sorted(MMQ_FORMATS)})")
    if K % QUANT_BLOCK or (splits is not None and splits < 1):
        raise ValueError(f"mmq needs K a multiple of {QUANT_BLOCK} and at least one split, got K={K}, splits={splits}")
    if not (T and N):
        return None
    splits = k_splits(T, N, K) if splits is None else splits
    grid = ((N + MMQ_BN - 1) // MMQ_BN, (T + MMQ_BM - 1) // MMQ_BM, splits)
    if splits > 1 and partials is None:
        partials = np.uint64(workspace_ptr(k, PARTIALS, splits * T * N))
    return (grid, splits, *(NULL if a is None else a for a in (bias, residual)), NULL if splits == 1 else partials)


def _sum_splits(k, p, splits: int, b, r, y, T: int, N: int) -> None:
    """The split product's epilogue: y = r + (the partial sums in split order + b)."""
    k._launch("mmq.cu", "mmq_sum_splits", elementwise_grid(T * N), 256, (p, i32(splits), b, r, y, i32(T), i32(N)),
              keeps_quantized_input=True)


def product_bf16(k, raw, row_bytes: int, x, y, T: int, N: int, K: int, *, bias=None, residual=None,
                 fmt: str = "q8_0", splits: int | None = None, partials=None) -> None:
    """y [T, N] = x W^T (+ bias[n]) (+ residual[t, n]) for x float32 [T, K] (C-contiguous) on BF16 tensor cores
    (mmq_bf16_q8_0: product's tiles, k splits and arguments otherwise)."""
    launch = _tiles(k, fmt, T, N, K, splits, partials, bias, residual)
    if launch is None:
        return
    grid, splits, b, r, p = launch
    k._launch("mmq.cu", "mmq_bf16_q8_0", grid, MMQ_THREADS,
              (raw, i64(row_bytes), x, b, r, y, i32(T), i32(N), i32(K), p, i32(splits)), keeps_quantized_input=True)
    if splits > 1:
        _sum_splits(k, p, splits, b, r, y, T, N)


def product(k, raw, row_bytes: int, xq, xds, y, T: int, N: int, K: int, terms: int = 2, *,
            bias=None, residual=None, fmt: str = "q8_0", splits: int | None = None, partials=None) -> None:
    """y [T, N] = x W^T (+ bias[n]) (+ residual[t, n]) for x as quantize_q8 wrote it (xq [terms, T, K] int8 with
    term stride T K, xds [T, K/32] float4) and W the N stored rows of `raw`, row_bytes apart. K a multiple of 32;
    residual may be y itself. splits: k_splits' choice by default; partials: a float32 buffer of splits T N values
    for a split product (default: the backend's workspace PARTIALS)."""
    if terms not in (1, 2):
        raise ValueError(f"mmq takes 1 or 2 int8 terms, got {terms}")
    launch = _tiles(k, fmt, T, N, K, splits, partials, bias, residual)
    if launch is None:
        return
    grid, splits, b, r, p = launch
    k._launch("mmq.cu", "mmq_q8_0", grid, MMQ_THREADS,            # the one format MMQ_FORMATS holds
              (raw, i64(row_bytes), xq, xds, i64(T * K), b, r, y, i32(T), i32(N), i32(K), i32(terms), p, i32(splits)),
              keeps_quantized_input=True)
    if splits > 1:
        _sum_splits(k, p, splits, b, r, y, T, N)
