"""Launcher of mmq.cu: prefill products (T > MATVEC_MAX_T tokens) of Q8_0 weights on int8 tensor cores.

    xq, xds = vecdot.quantized_input(k, x, x2, T, K, terms)      # the decode products' int8 activations
    product(k, raw, w.row_bytes, xq, xds, y, T, N, K, terms, bias=b)   # residual=r: y = r + (x W^T + b)

The activations are vecdot.cu's quantize_q8 blocks (one or two int8 terms a value); each 32-wide k block's int8
products sum exactly in int32 on the tensor cores (mma.sync m16n8k32), then are scaled by the weight block's
and the activation term's scales in float32. With two terms the error is the decode products' (conformance row
matmul_q8x2, the threshold of matvec_q8x2). M0_CUDA_PREFILL_Q8 picks the path of Q8_0 prefill products
(CudaBackend): "tf32x3" (the default, matmul.prefill_product) or "mma" (this kernel).
"""
from __future__ import annotations

from worker.backend.cuda_runtime import NULL, i32, i64

MMQ_FORMATS = frozenset({"q8_0"})     # formats with an mmq_<fmt> kernel
PREFILL_Q8_PATHS = ("tf32x3", "mma")  # M0_CUDA_PREFILL_Q8
MMQ_BM = 64                           # tokens a block: must match mmq.cu
MMQ_BN = 64                           # weight rows a block: must match mmq.cu
MMQ_THREADS = 256                     # 8 warps: must match mmq.cu
QUANT_BLOCK = 32


def product(k, raw, row_bytes: int, xq, xds, y, T: int, N: int, K: int, terms: int = 2, *,
            bias=None, residual=None, fmt: str = "q8_0") -> None:
    """y [T, N] = x W^T (+ bias[n]) (+ residual[t, n]) for x as quantize_q8 wrote it (xq [terms, T, K] int8 with
    term stride T K, xds [T, K/32] float4) and W the N stored rows of `raw`, row_bytes apart. K a multiple of 32;
    residual may be y itself."""
    if fmt not in MMQ_FORMATS:
        raise ValueError(f"mmq has no kernel for {fmt!r} (only {sorted(MMQ_FORMATS)})")
    if K % QUANT_BLOCK or terms not in (1, 2):
        raise ValueError(f"mmq needs K a multiple of {QUANT_BLOCK} and 1 or 2 terms, got K={K}, terms={terms}")
    if not (T and N):
        return
    grid = ((N + MMQ_BN - 1) // MMQ_BN, (T + MMQ_BM - 1) // MMQ_BM)
    b, r = (NULL if a is None else a for a in (bias, residual))
    k._launch("mmq.cu", f"mmq_{fmt}", grid, MMQ_THREADS,
              (raw, i64(row_bytes), xq, xds, i64(T * K), b, r, y, i32(T), i32(N), i32(K), i32(terms)),
              keeps_quantized_input=True)
