"""Plain floating-point tensors: F32, F16, BF16 (one value per 'block')."""
from __future__ import annotations

import numpy as np


def dequantize_f32(blocks: np.ndarray) -> np.ndarray:
    return blocks.view("<f4").astype(np.float32)


def dequantize_f16(blocks: np.ndarray) -> np.ndarray:
    return blocks.view("<f2").astype(np.float32)


def dequantize_bf16(blocks: np.ndarray) -> np.ndarray:
    # bf16 is the upper half of an IEEE f32: shift its 16 bits into place (NaN payloads kept).
    return (blocks.view("<u2").astype(np.uint32) << 16).view(np.float32)
