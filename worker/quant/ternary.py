"""Ternary formats TQ1_0 and TQ2_0: values in {-1, 0, 1} times one f16 scale per 256 values.

Each function takes blocks as uint8 [n_blocks, type_size] and returns float32 [n_blocks, 256],
bit-exact with ggml's dequantize_row_tq1_0 / tq2_0: x = (float)(q - 1) * d.
"""
from __future__ import annotations

import numpy as np

from worker.quant.kquants import two_bit_planes

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start:start + 2].copy().view("<f2").astype(np.float32)   # [n, 1]


def _trits(packed: np.ndarray, digits: int) -> np.ndarray:
    """[n, m] bytes, each holding `digits` base-3 digits as a fixed-point fraction of 256
    (ggml: digit k of byte q is ((u8)(q * 3^k) * 3) >> 8) -> [n, digits * m], digit-major."""
    shifted = packed[:, None, :] * _POW3[:digits, None]                      # uint8 wrap-around, as in C
    return ((shifted.astype(np.uint16) * 3) >> 8).reshape(packed.shape[0], -1)


def dequantize_tq1_0(blocks: np.ndarray) -> np.ndarray:
    """qs[48] (5 trits per byte) · qh[4] (4 trits per byte) · d:f16. Values 0..159: digit k of
    qs[m] (m < 32) is value 32k + m; 160..239: digit k of qs[32 + m] is 160 + 16k + m;
    240..255: digit k of qh[m] is 240 + 4k + m."""
    d = _f16(blocks, 52)
    q = np.concatenate([_trits(blocks[:, 0:32], 5), _trits(blocks[:, 32:48], 5), _trits(blocks[:, 48:52], 4)],
                       axis=1)
    return (q.astype(np.int8) - np.int8(1)).astype(np.float32) * d


def dequantize_tq2_0(blocks: np.ndarray) -> np.ndarray:
    """qs[64] (2-bit codes in Q2_K's order) · d:f16 ; x = (q - 1) * d."""
    d = _f16(blocks, 64)
    q = two_bit_planes(blocks[:, 0:64])
    return (q.astype(np.int8) - np.int8(1)).astype(np.float32) * d
