"""The quant formats this worker reads: block geometry and stored layout, one row per format.

Sizes are checked against gguf-py's GGML_QUANT_SIZES in the tests (the oracle), not copied
from it here, so a disagreement shows up as a failure instead of being inherited.
"""
from __future__ import annotations

from dataclasses import dataclass

from gguf import GGMLQuantizationType as Q


@dataclass(frozen=True)
class QuantFormat:
    qtype: Q
    block_size: int      # values per block
    type_size: int       # bytes per block
    layout: str          # the stored bytes of one block, in order

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def bits_per_value(self) -> float:
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, n_values: int) -> int:
        """Bytes of one row of n_values (n_values must be a whole number of blocks)."""
        return n_values // self.block_size * self.type_size


_TABLE = [
    QuantFormat(Q.F32, 1, 4, "f32 value"),
    QuantFormat(Q.F16, 1, 2, "f16 value"),
    QuantFormat(Q.BF16, 1, 2, "bf16 value (upper 16 bits of an f32)"),
    QuantFormat(Q.Q8_0, 32, 34, "d:f16 · q[32]:int8 ; x = d*q"),
    QuantFormat(Q.Q4_0, 32, 18,
                "d:f16 · qs[16]:u8 ; x[i] = d*((qs[i] & 15) - 8), x[i+16] = d*((qs[i] >> 4) - 8)"),
    QuantFormat(Q.Q4_1, 32, 20,
                "d:f16 · m:f16 · qs[16]:u8 ; x[i] = d*(qs[i] & 15) + m, x[i+16] = d*(qs[i] >> 4) + m"),
    QuantFormat(Q.Q4_K, 256, 144,
                "d:f16 · dmin:f16 · scales[12] (8 x 6-bit scale, 8 x 6-bit min) · qs[128] ; "
                "8 sub-blocks of 32: x = d*sc[j]*q - dmin*m[j]"),
    QuantFormat(Q.Q5_K, 256, 176,
                "d:f16 · dmin:f16 · scales[12] · qh[32] (5th bits) · qs[128] (low nibbles) ; "
                "x = d*sc[j]*q - dmin*m[j], q in 0..31"),
    QuantFormat(Q.Q6_K, 256, 210,
                "ql[128] (low 4 bits) · qh[64] (high 2 bits) · scales[16]:int8 · d:f16 ; "
                "16 sub-blocks of 16: x = d*sc[j]*(q - 32)"),
    QuantFormat(Q.MXFP4, 32, 17,
                "e:E8M0 (u8) · qs[16]:u8 of E2M1 nibbles ; x[i] = 2^(e-127) * fp4(qs[i] & 15), "
                "x[i+16] = 2^(e-127) * fp4(qs[i] >> 4)"),
]

FORMATS: dict[Q, QuantFormat] = {f.qtype: f for f in _TABLE}
