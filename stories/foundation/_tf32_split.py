"""A NumPy emulation of worker/backend/kernels/tf32.cuh: float32 values split into two TF32 parts.

    hi, lo = tf32_split(v)       # hi = v rounded to TF32, lo = (v - hi) rounded to TF32

TF32 keeps float32's exponent and 10 explicit mantissa bits (the low 13 bits zero). Rounding is
to nearest even; a finite value that would round past FLT_MAX is truncated; Inf and NaN pass
unchanged, with lo = 0. stories/foundation/test_ft016_split_tf32_bound.py checks the kernel's
source, compiled for the host, against these functions bit for bit.
"""
from __future__ import annotations

import numpy as np

EXP = np.uint32(0x7F800000)
LOW13 = np.uint32(0x1FFF)


def tf32_round(v: np.ndarray) -> np.ndarray:
    u = np.asarray(v, np.float32).view(np.uint32)
    r = (u + np.uint32(0xFFF) + ((u >> np.uint32(13)) & np.uint32(1))) & ~LOW13
    r = np.where((r & EXP) == EXP, u & ~LOW13, r)
    return np.where((u & EXP) == EXP, u, r).astype(np.uint32).view(np.float32)


def tf32_split(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(v, np.float32)
    hi = tf32_round(v)
    with np.errstate(invalid="ignore"):
        lo = tf32_round(v - hi)
    return hi, np.where(np.isfinite(v), lo, np.float32(0)).astype(np.float32)


def is_tf32(v: np.ndarray) -> bool:
    """Every finite value has its low 13 mantissa bits zero (a tensor core reads it exactly)."""
    v = np.asarray(v, np.float32)
    return not (v.view(np.uint32) & LOW13)[np.isfinite(v)].any()
