"""IQ4_NL and IQ4_XS: 4-bit indices into ggml's fixed non-linear table of 16 int8 levels.

Each function takes blocks as uint8 [n_blocks, type_size] and returns float32 [n_blocks, block_size],
bit-exact with ggml's dequantize_row_iq4_nl / iq4_xs (one float32 product per value).
"""
from __future__ import annotations

import numpy as np

# kvalues_iq4nl, ggml-common.h: the 16 levels of IQ4_NL and IQ4_XS.
IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start:start + 2].copy().view("<f2").astype(np.float32)   # [n, 1]


def _levels(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] levels: low nibbles are values 0..15, high nibbles 16..31."""
    return IQ4_LEVELS[np.concatenate([qs & 0x0F, qs >> 4], axis=-1)]


def dequantize_iq4_nl(blocks: np.ndarray) -> np.ndarray:
    """d:f16 · qs[16] ; blocks of 32."""
    return _f16(blocks, 0) * _levels(blocks[:, 2:18])


def dequantize_iq4_xs(blocks: np.ndarray) -> np.ndarray:
    """d:f16 · scales_h:u16 · scales_l[4] · qs[128] ; 8 sub-blocks of 32, each with a 6-bit scale
    ls = (nibble ib%2 of scales_l[ib/2]) | (bits 2ib..2ib+1 of scales_h) << 4 and x = d*(ls - 32) * level."""
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    scales_h = blocks[:, 2:4].copy().view("<u2").astype(np.int32)                  # [n, 1]
    ib = np.arange(8)
    low = (blocks[:, 4 + ib // 2].astype(np.int32) >> (4 * (ib % 2))) & 0x0F
    high = (scales_h >> (2 * ib)) & 3
    dl = d * ((low | (high << 4)) - 32).astype(np.float32)                         # [n, 8]
    levels = _levels(blocks[:, 8:136].reshape(n, 8, 16))                            # [n, 8, 32]
    return (dl[:, :, None] * levels).reshape(n, 256)
