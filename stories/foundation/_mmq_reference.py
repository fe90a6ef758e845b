"""The int8 prefill product of Q8_0 weights (worker/backend/kernels/mmq.cu) in NumPy, for its host and GPU tests.

The activations are quantized as the GPU's quantize_q8 does (LT-019's NumPy statement of it,
quantize_like_the_gpu); each 32-value block's int8 products are summed exactly (integers in float64), one sum a
term, and scaled by the weight block's f16 scale and the term's scale in float64:

    y[t, n] = sum_b d_w[n, b] (d0[t, b] S0[t, n, b] + d1[t, b] S1[t, n, b]),  S_j = sum_i q_j[t, b, i] w[n, b, i]

The kernel differs from this only by its float32 accumulation. Against the float product x @ dequant(W)^T (W
dequantized by gguf-py) both differ by the activations' quantization error, which is the decode products' (the
same quantize_q8 blocks): held to the term-normalized threshold of matvec_q8x2 (two terms, 1e-8; see
stories/foundation/_cuda_conformance.py THRESHOLDS for the bound) or plain matvec_q8 (one term, llama.cpp's 5e-4).
"""
from __future__ import annotations

import gguf
import numpy as np

from stories.llama.test_lt019_int8_products_on_the_host import quantize_like_the_gpu

Q8_0_BYTES = 34                      # d:f16 | q[32]:int8


def q8_0_fields(blocks: np.ndarray, N: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """(quants int8 [N, K/32, 32], scales float64 [N, K/32]) of N stored Q8_0 rows of K values."""
    raw = np.ascontiguousarray(blocks, np.uint8).reshape(N, K // 32, Q8_0_BYTES)
    scales = raw[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float64)
    return raw[:, :, 2:].copy().view(np.int8), scales


def int8_product(x: np.ndarray, blocks: np.ndarray, N: int, terms: int = 2) -> np.ndarray:
    """y [T, N] of mmq.cu's product, exactly (float64 after exact integer sums)."""
    T, K = x.shape
    xq, xds, _ = quantize_like_the_gpu(np.asarray(x, np.float32), terms)
    wq, wd = q8_0_fields(blocks, N, K)
    ds = xds.astype(np.float64)
    y = np.zeros((T, N))
    for b in range(K // 32):
        w = wq[:, b].astype(np.float64).T                       # [32, N]
        for j in range(terms):
            # integer block sums, exact in float64: 32 products of at most 2^14 each, far below 2^53
            sums = xq[j].reshape(T, K // 32, 32)[:, b].astype(np.float64) @ w
            y += sums * ds[:, b, j, None] * wd[None, :, b]
    return y


def dequantized(blocks: np.ndarray, N: int, K: int) -> np.ndarray:
    """W [N, K] in float64, dequantized by gguf-py (code we did not write)."""
    return np.asarray(gguf.quants.dequantize(np.ascontiguousarray(blocks, np.uint8).reshape(N, -1),
                                             gguf.GGMLQuantizationType.Q8_0), np.float64).reshape(N, K)


def term_normalized(out: np.ndarray, ref: np.ndarray, x: np.ndarray, dense: np.ndarray) -> float:
    """sum((out - ref)^2) / sum((|x| @ |W|^T)^2), the products' measure (_cuda_conformance.check_product)."""
    scale = np.abs(np.asarray(x, np.float64)) @ np.abs(dense).T
    denom = float(np.sum(scale ** 2))
    err = float(np.sum((np.asarray(out, np.float64) - ref) ** 2))
    if not np.isfinite(out).all():
        return float("inf")
    return err / denom if denom else (0.0 if err == 0.0 else float("inf"))
