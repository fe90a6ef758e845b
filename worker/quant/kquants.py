"""K-quants: super-blocks of 256 values with per-sub-block scales (Q4_K, Q5_K, Q6_K).

Each function takes blocks as uint8 [n_blocks, type_size] and returns float32 [n_blocks, 256],
bit-exact with ggml's dequantize_row_q{4,5,6}_K (float32 arithmetic in the same order).
"""
from __future__ import annotations

import numpy as np

QK_K = 256


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start:start + 2].copy().view("<f2").astype(np.float32)   # [n, 1]


def unpack_scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 packed bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4).

    Sub-blocks 0..3: low 6 bits of bytes 0..3 (scale) and 4..7 (min).
    Sub-blocks 4..7: low/high nibble of bytes 8..11, topped with the 2 spare high bits of
    bytes 0..3 (scale) and 4..7 (min).
    """
    s = scales.astype(np.uint8)
    lo_sc, lo_m, packed = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo_sc & 63, (packed & 0x0F) | ((lo_sc >> 6) << 4)], axis=1)
    m = np.concatenate([lo_m & 63, (packed >> 4) | ((lo_m >> 6) << 4)], axis=1)
    return sc, m


def _low_nibbles_k(qs: np.ndarray) -> np.ndarray:
    """qs [n, 128] -> [n, 8, 32]: chunk c of 32 bytes holds sub-block 2c (low) and 2c+1 (high)."""
    chunks = qs.reshape(-1, 4, 32)
    return np.stack([chunks & 0x0F, chunks >> 4], axis=2).reshape(-1, 8, 32)


def _scaled(q: np.ndarray, d, dmin, sc, m) -> np.ndarray:
    """x = (d*sc) * q - (dmin*m), each product rounded to float32 as ggml does."""
    d_sub = (d * sc.astype(np.float32))[:, :, None]        # [n, 8, 1]
    m_sub = (dmin * m.astype(np.float32))[:, :, None]
    return (d_sub * q.astype(np.float32) - m_sub).reshape(-1, QK_K)


def dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, m = unpack_scale_min_k4(blocks[:, 4:16])
    q = _low_nibbles_k(blocks[:, 16:144])
    return _scaled(q, d, dmin, sc, m)


def dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, m = unpack_scale_min_k4(blocks[:, 4:16])
    qh = blocks[:, 16:48]                                    # bit j of qh[l]: 5th bit of sub-block j, position l
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = _low_nibbles_k(blocks[:, 48:176]) | (high << 4)
    return _scaled(q, d, dmin, sc, m)


def dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Two halves of 128: value 32g+l of half h has low 4 bits from ql[64h + l + 32*(g&1)]
    (low nibble for g<2, high nibble for g>=2) and high 2 bits from qh[32h + l] >> 2g."""
    n = blocks.shape[0]
    ql = blocks[:, 0:128].reshape(n, 2, 2, 32)                # [n, half, l-offset 0/32, l]
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)   # [n, 16], one per 16 values
    d = _f16(blocks, 208)
    low = np.concatenate([ql & 0x0F, ql >> 4], axis=2)        # [n, half, g=0..3, l]
    high = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(n, 16, 16)
    d_sub = (d * scales)[:, :, None]
    return (d_sub * q.astype(np.float32)).reshape(n, QK_K)
