"""The registry of weight formats this worker reads: each format described once.

One row per ggml type: block geometry, stored layout, the NumPy reference dequantizer and the
CUDA kernel suffix. Everything else derives from this table: the GGUF reader's supported-type
check, worker.quant.dequantize, the CUDA backend's kernel names (and a test that the
FOR_EACH_FORMAT list in kernels/quant.cuh is this list), the table in docs/gguf.md and the tests.
This mirrors gguf-py's quants.py, which registers each format once.

Sizes are checked against gguf-py's GGML_QUANT_SIZES in the tests (the oracle), not copied
from it here, so a disagreement shows up as a failure instead of being inherited.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as Q

from worker.quant import floats, iquants, kquants, legacy, mxfp4, ternary

Dequantizer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class QuantFormat:
    qtype: Q
    block_size: int      # values per block
    type_size: int       # bytes per block
    layout: str          # the stored bytes of one block, in order
    dequantize_blocks: Dequantizer = field(repr=False)   # uint8 [n, type_size] -> float32 [n, block_size]
    f16_fields: tuple[int, ...] = ()   # byte offsets of the block's f16 scales (tests keep them finite)

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def kernel(self) -> str:
        """Suffix of the CUDA functions for this format: dq8_<kernel>, matvec_<kernel>, ..."""
        return self.qtype.name.lower()

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_values: int) -> int:
        """Bytes of one row of n_values (n_values must be a whole number of blocks)."""
        return n_values // self.block_size * self.type_size


_TABLE = [
    # -- plain floats
    QuantFormat(Q.F32, 1, 4, "f32 value", floats.dequantize_f32),
    QuantFormat(Q.F16, 1, 2, "f16 value", floats.dequantize_f16),
    QuantFormat(Q.BF16, 1, 2, "bf16 value (upper 16 bits of an f32)", floats.dequantize_bf16),
    # -- legacy 32-value blocks
    QuantFormat(Q.Q8_0, 32, 34, "d:f16 · q[32]:int8 ; x = d*q", legacy.dequantize_q8_0, (0,)),
    QuantFormat(Q.Q4_0, 32, 18,
                "d:f16 · qs[16]:u8 ; x[i] = d*((qs[i] & 15) - 8), x[i+16] = d*((qs[i] >> 4) - 8)",
                legacy.dequantize_q4_0, (0,)),
    QuantFormat(Q.Q4_1, 32, 20,
                "d:f16 · m:f16 · qs[16]:u8 ; x[i] = d*(qs[i] & 15) + m, x[i+16] = d*(qs[i] >> 4) + m",
                legacy.dequantize_q4_1, (0, 2)),
    QuantFormat(Q.Q5_0, 32, 22,
                "d:f16 · qh:u32 (bit j: 5th bit of value j) · qs[16]:u8 (low nibbles as Q4_0) ; x = d*(q - 16)",
                legacy.dequantize_q5_0, (0,)),
    QuantFormat(Q.Q5_1, 32, 24,
                "d:f16 · m:f16 · qh:u32 (bit j: 5th bit of value j) · qs[16]:u8 ; x = d*q + m",
                legacy.dequantize_q5_1, (0, 2)),
    QuantFormat(Q.MXFP4, 32, 17,
                "e:E8M0 (u8) · qs[16]:u8 of E2M1 nibbles ; x[i] = 2^(e-127) * fp4(qs[i] & 15), "
                "x[i+16] = 2^(e-127) * fp4(qs[i] >> 4)",
                mxfp4.dequantize_mxfp4),
    # -- K-quants: super-blocks of 256
    QuantFormat(Q.Q2_K, 256, 84,
                "scales[16] (low nibble: scale, high nibble: min) · qs[64] (2-bit) · d:f16 · dmin:f16 ; "
                "16 sub-blocks of 16: x = d*sc[j]*q - dmin*m[j]",
                kquants.dequantize_q2_k, (80, 82)),
    QuantFormat(Q.Q3_K, 256, 110,
                "hmask[32] (3rd bits) · qs[64] (low 2 bits) · scales[12] (16 x 6-bit) · d:f16 ; "
                "16 sub-blocks of 16: x = d*(sc[j] - 32)*(q - 4*(1 - hbit))",
                kquants.dequantize_q3_k, (108,)),
    QuantFormat(Q.Q4_K, 256, 144,
                "d:f16 · dmin:f16 · scales[12] (8 x 6-bit scale, 8 x 6-bit min) · qs[128] ; "
                "8 sub-blocks of 32: x = d*sc[j]*q - dmin*m[j]",
                kquants.dequantize_q4_k, (0, 2)),
    QuantFormat(Q.Q5_K, 256, 176,
                "d:f16 · dmin:f16 · scales[12] · qh[32] (5th bits) · qs[128] (low nibbles) ; "
                "x = d*sc[j]*q - dmin*m[j], q in 0..31",
                kquants.dequantize_q5_k, (0, 2)),
    QuantFormat(Q.Q6_K, 256, 210,
                "ql[128] (low 4 bits) · qh[64] (high 2 bits) · scales[16]:int8 · d:f16 ; "
                "16 sub-blocks of 16: x = d*sc[j]*(q - 32)",
                kquants.dequantize_q6_k, (208,)),
    # -- IQ4: 4-bit indices into a fixed non-linear table of 16 levels
    QuantFormat(Q.IQ4_NL, 32, 18,
                "d:f16 · qs[16]:u8 ; x[i] = d*iq4(qs[i] & 15), x[i+16] = d*iq4(qs[i] >> 4)",
                iquants.dequantize_iq4_nl, (0,)),
    QuantFormat(Q.IQ4_XS, 256, 136,
                "d:f16 · scales_h:u16 · scales_l[4] · qs[128] ; 8 sub-blocks of 32 as IQ4_NL with "
                "x = d*(ls - 32)*iq4(q), ls 6-bit",
                iquants.dequantize_iq4_xs, (0,)),
    # -- IQ2 / IQ3 / IQ1: indices into lattice grids (worker/quant/iq_tables.py), sign bits, sub-block scales
    QuantFormat(Q.IQ2_XXS, 256, 66,
                "d:f16 · 8 x (grid index[4]:u8 · u32 = 4 x 7 sign bits + 4-bit scale ls) ; "
                "x = d*(0.5 + ls)/4 * iq2xxs_grid[index][j] * sign",
                iquants.dequantize_iq2_xxs, (0,)),
    QuantFormat(Q.IQ2_XS, 256, 74,
                "d:f16 · qs[32]:u16 (9-bit grid index, 7 sign bits) · scales[8] (4-bit ls per 16 values) ; "
                "x = d*(0.5 + ls)/4 * iq2xs_grid[index][j] * sign",
                iquants.dequantize_iq2_xs, (0,)),
    QuantFormat(Q.IQ2_S, 256, 82,
                "d:f16 · qs[32] (index low 8 bits) · signs[32] · qh[8] (2 high bits per index) · scales[8] ; "
                "x = d*(0.5 + ls)/4 * iq2s_grid[index][j] * sign",
                iquants.dequantize_iq2_s, (0,)),
    QuantFormat(Q.IQ3_XXS, 256, 98,
                "d:f16 · qs[64] (4-value grid index per byte) · 8 x u32 (4 x 7 sign bits + 4-bit ls) ; "
                "x = d*(0.5 + ls)/2 * iq3xxs_grid[index][j] * sign",
                iquants.dequantize_iq3_xxs, (0,)),
    QuantFormat(Q.IQ3_S, 256, 110,
                "d:f16 · qs[64] (index low 8 bits) · qh[8] (9th bits) · signs[32] · scales[4] (4-bit ls per 32) ; "
                "x = d*(1 + 2*ls) * iq3s_grid[index][j] * sign",
                iquants.dequantize_iq3_s, (0,)),
    QuantFormat(Q.IQ1_S, 256, 50,
                "d:f16 · qs[32] (index low 8 bits) · qh[8]:u16 (3 x 3 high bits, 3-bit ls, delta sign) ; "
                "x = d*(2*ls + 1) * (iq1s_grid[index][j] ± 0.125)",
                iquants.dequantize_iq1_s, (0,)),
    QuantFormat(Q.IQ1_M, 256, 56,
                "qs[32] (index low 8 bits) · qh[16] (3 high bits + delta sign per index) · scales[8] "
                "(3-bit ls per 16 values; f16 d in the top nibbles of the 4 u16) ; x = d*(2*ls + 1) * (grid ± 0.125)",
                iquants.dequantize_iq1_m),
    # -- ternary: {-1, 0, 1} * d
    QuantFormat(Q.TQ1_0, 256, 54,
                "qs[48] (5 base-3 digits per byte) · qh[4] (4 digits per byte) · d:f16 ; x = (q - 1)*d",
                ternary.dequantize_tq1_0, (52,)),
    QuantFormat(Q.TQ2_0, 256, 66,
                "qs[64] (2-bit codes, Q2_K's order) · d:f16 ; x = (q - 1)*d",
                ternary.dequantize_tq2_0, (64,)),
]

FORMATS: dict[Q, QuantFormat] = {f.qtype: f for f in _TABLE}
