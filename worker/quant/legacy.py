"""ggml's original 32-value block formats: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Each function takes blocks as uint8 [n_blocks, type_size] and returns float32 [n_blocks, 32].
Arithmetic is float32 in the order ggml's reference dequantize_row_* uses, so results are
bit-exact with it.
"""
from __future__ import annotations

import numpy as np


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The f16 at byte `start` of each block, as float32 [n, 1]."""
    return blocks[:, start:start + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] bytes -> [n, 32] values: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)
    q = blocks[:, 2:34].view(np.int8).astype(np.float32)
    return q * d


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 2:18]).astype(np.float32) - np.float32(8)
    return q * d


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)
    m = _f16(blocks, 2)
    q = _nibbles(blocks[:, 4:20]).astype(np.float32)
    return q * d + m


def _fifth_bits(blocks: np.ndarray, start: int) -> np.ndarray:
    """The 32 fifth bits of a Q5 block, little-endian u32 at byte `start`: bit j belongs to value j."""
    qh = blocks[:, start:start + 4]
    return np.unpackbits(qh, axis=1, bitorder="little")       # [n, 32], 0/1


def dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 6:22]) | (_fifth_bits(blocks, 2) << 4)
    return (q.astype(np.float32) - np.float32(16)) * d


def dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    d = _f16(blocks, 0)
    m = _f16(blocks, 2)
    q = _nibbles(blocks[:, 8:24]) | (_fifth_bits(blocks, 4) << 4)
    return q.astype(np.float32) * d + m
