"""Rotary position embedding tables, computed on the host and shared by every backend.

A head vector is split into `rope.dim // 2` pairs; pair i at position p is rotated by the angle
p * inv_freq[i], with inv_freq[i] = base ** (-2i / dim). Which elements form a pair is the
backend's business ("normal": (2i, 2i+1) as in GPT-J / llama.cpp NORM; "neox": (i, i + dim/2)
as in GPT-NeoX / transformers' rotate_half); the angles are the same for both.

Scaling (transformers `modeling_rope_utils`, llama.cpp `ggml_rope_yarn_corr_dims`/`rope_yarn`):
- linear: positions are divided by `factor` (llama.cpp: freq_scale = 1/factor).
- yarn:   each pair blends the interpolated frequency inv_freq/factor with the original one
          through a linear ramp between the correction dims [low, high] derived from
          beta_fast/beta_slow and the original context; cos and sin are multiplied by
          attn_factor * (0.1 * ln(factor) + 1).
"""
from __future__ import annotations

import math

import numpy as np

from worker.config import RopeConfig


def _yarn_correction_dim(n_rotations: float, dim: int, base: float, original_context: int) -> float:
    """The pair index whose wavelength fits `n_rotations` times into the original context."""
    return (dim * math.log(original_context / (n_rotations * 2 * math.pi))) / (2 * math.log(base))


def yarn_correction_range(rope: RopeConfig, truncate: bool = True) -> tuple[float, float]:
    """[low, high] pair indices of the YaRN ramp (llama.cpp floors/ceils them: truncate=True)."""
    low = _yarn_correction_dim(rope.beta_fast, rope.dim, rope.base, rope.original_context)
    high = _yarn_correction_dim(rope.beta_slow, rope.dim, rope.base, rope.original_context)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, rope.dim - 1)


def rope_inv_freq(rope: RopeConfig, truncate: bool | None = None) -> tuple[np.ndarray, float]:
    """Per-pair angular frequencies [dim // 2] (float64) and the cos/sin magnitude scale.

    `truncate` (YaRN only) rounds the correction range to whole pairs: llama.cpp always does,
    transformers does unless the config says `truncate: false` (GPT-OSS). Default: the config's.
    """
    if truncate is None:
        truncate = rope.truncate
    inv_freq = 1.0 / (rope.base ** (np.arange(0, rope.dim, 2, dtype=np.float64) / rope.dim))
    scaling = rope.scaling or "none"
    if scaling == "none" or rope.factor == 1.0 and scaling == "linear":
        return inv_freq, 1.0
    if scaling == "linear":
        return inv_freq / rope.factor, 1.0
    if scaling == "yarn":
        low, high = yarn_correction_range(rope, truncate)
        if low == high:
            high += 0.001  # avoid a zero-width ramp (both implementations do this)
        ramp = np.clip((np.arange(rope.dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        extrapolation_weight = 1.0 - ramp          # 1: keep the original frequency (fast dims)
        interpolated = inv_freq / rope.factor
        blended = interpolated * (1.0 - extrapolation_weight) + inv_freq * extrapolation_weight
        magnitude = 0.1 * math.log(rope.factor) + 1.0 if rope.factor > 1.0 else 1.0
        return blended, rope.attn_factor * magnitude
    raise ValueError(f"unknown rope scaling {scaling!r}: expected none, linear or yarn")


def rope_cos_sin(positions: np.ndarray, rope: RopeConfig,
                 truncate: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the rotation angles: two float32 arrays [T, dim // 2] for positions [T].

    Angles are computed in float64 (positions can reach 1e5+), then rounded once.
    """
    inv_freq, magnitude = rope_inv_freq(rope, truncate)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return (np.cos(angles) * magnitude).astype(np.float32), (np.sin(angles) * magnitude).astype(np.float32)
