"""K-quants: super-blocks of 256 values with per-sub-block scales (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).

Each function takes blocks as uint8 [n_blocks, type_size] and returns float32 [n_blocks, 256],
bit-exact with ggml's dequantize_row_q{2,3,4,5,6}_K (float32 arithmetic in the same order).
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


def two_bit_planes(qs: np.ndarray) -> np.ndarray:
    """qs [n, 64] -> [n, 256] 2-bit values: value 128h + 32j + l is (qs[32h + l] >> 2j) & 3
    (Q2_K and Q3_K share this order: ggml's dequantize_row_q2_K / q3_K loops)."""
    halves = qs.reshape(-1, 2, 1, 32)
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    return ((halves >> shifts) & 3).reshape(-1, QK_K)


def dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    """scales[16] (low nibble: scale, high nibble: min, one pair per 16 values) · qs[64] · d · dmin."""
    n = blocks.shape[0]
    scales = blocks[:, 0:16]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    dl = (d * (scales & 0x0F).astype(np.float32))[:, :, None]          # [n, 16, 1]
    ml = (dmin * (scales >> 4).astype(np.float32))[:, :, None]
    q = two_bit_planes(blocks[:, 16:80]).reshape(n, 16, 16).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def unpack_scales_q3_k(scales: np.ndarray) -> np.ndarray:
    """12 packed bytes -> 16 six-bit scales minus 32, as int8 (ggml's kmask1/kmask2 shuffle).

    Scale s: low 4 bits are nibble s >> 3 of byte s & 7; high 2 bits are bits 2(s >> 2) of byte 8 + (s & 3).
    """
    s = np.arange(16)
    low = (scales[:, s & 7] >> (4 * (s >> 3)).astype(np.uint8)) & 0x0F
    high = (scales[:, 8 + (s & 3)] >> (2 * (s >> 2)).astype(np.uint8)) & 0x03
    return (low | (high << 4)).astype(np.int8) - np.int8(32)


def dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    """hmask[32] · qs[64] · scales[12] · d. Value v = 128h + 32j + l: low 2 bits as Q2_K, and
    4 is subtracted when bit 4h + j of hmask[l] is clear: x = d*(sc - 32) * (q - 4*(1 - hbit))."""
    n = blocks.shape[0]
    hmask = blocks[:, 0:32]
    d = _f16(blocks, 108)
    dl = (d * unpack_scales_q3_k(blocks[:, 96:108]).astype(np.float32))[:, :, None]   # [n, 16, 1]
    hbit = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1        # [n, 8, 32]
    low = two_bit_planes(blocks[:, 32:96]).astype(np.int8)
    q = low - ((1 - hbit.reshape(n, QK_K)) << 2).astype(np.int8)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)
