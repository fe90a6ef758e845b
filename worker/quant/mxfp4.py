"""MXFP4 (OCP microscaling FP4): blocks of 32 E2M1 values sharing one E8M0 power-of-two scale.

Block (17 bytes): e (u8, E8M0: 2^(e-127)) then 16 bytes; element i is the low nibble of byte i,
element i+16 the high nibble (ggml's order, as written by llama.cpp's GPT-OSS converter).
A nibble is sign (bit 3) and a 3-bit E2M1 magnitude: 0, 0.5, 1, 1.5, 2, 3, 4, 6.

ggml stores the magnitudes doubled as integers (0,1,2,3,4,6,8,12) and halves the scale
instead, so x = (2^(e-127) / 2) * (2*fp4); both factors and the product are exact in float32
(ggml maps e=255 to 2^127 rather than NaN, and we follow ggml).
"""
from __future__ import annotations

import numpy as np

FP4_E2M1_DOUBLED = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)
FP4_E2M1 = FP4_E2M1_DOUBLED / 2


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """2^(e-128) as float32 (subnormal for e < 2), i.e. half the block's E8M0 scale."""
    return np.ldexp(np.float32(1.0), e.astype(np.int32) - 128).astype(np.float32)


def dequantize_mxfp4(blocks: np.ndarray) -> np.ndarray:
    half_scale = e8m0_half(blocks[:, 0:1])                  # [n, 1]
    qs = blocks[:, 1:17]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)    # [n, 32]
    return half_scale * FP4_E2M1_DOUBLED[codes]
