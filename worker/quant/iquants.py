"""The IQ formats: indices into fixed tables of levels (IQ4_NL, IQ4_XS) or of lattice points
(IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M; grids in worker/quant/iq_tables.py).

Each function takes blocks as uint8 [n_blocks, type_size] and returns float32 [n_blocks, block_size],
bit-exact with ggml's dequantize_row_iq* (float32 products in ggml's order).
"""
from __future__ import annotations

import numpy as np

from worker.quant import iq_tables

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


def _grid(hex_text: str, width: int, dtype=np.uint8) -> np.ndarray:
    """A grid as float32 [n_points, width]: the bytes of each little-endian entry."""
    return np.frombuffer(bytes.fromhex(hex_text), dtype=dtype).reshape(-1, width).astype(np.float32)


IQ2XXS_GRID = _grid(iq_tables.IQ2XXS_GRID, 8)
IQ2XS_GRID = _grid(iq_tables.IQ2XS_GRID, 8)
IQ2S_GRID = _grid(iq_tables.IQ2S_GRID, 8)
IQ3XXS_GRID = _grid(iq_tables.IQ3XXS_GRID, 4)
IQ3S_GRID = _grid(iq_tables.IQ3S_GRID, 4)
IQ1S_GRID = _grid(iq_tables.IQ1S_GRID, 8, np.int8)        # values -1, 0, 1
IQ1_DELTA = np.float32(0.125)                               # IQ1S_DELTA / IQ1M_DELTA, ggml-common.h

# ggml's ksigns_iq2xs: 7 stored sign bits, the 8th makes the number of minus signs even.
_SEVEN = np.arange(128, dtype=np.uint8)
KSIGNS = _SEVEN | ((np.unpackbits(_SEVEN[:, None], axis=1).sum(axis=1) & 1) << 7).astype(np.uint8)


def _sign_bits(bytes_: np.ndarray) -> np.ndarray:
    """[...] sign bytes -> [..., 8] factors: bit j set means value j is negated."""
    bits = (bytes_[..., None] >> np.arange(8, dtype=np.uint8)) & 1
    return np.where(bits == 0, np.float32(1), np.float32(-1))


def _u32(blocks: np.ndarray, start: int, count: int) -> np.ndarray:
    return blocks[:, start:start + 4 * count].copy().view("<u4")


def _u16(blocks: np.ndarray, start: int, count: int) -> np.ndarray:
    return blocks[:, start:start + 2 * count].copy().view("<u2")


def _quarter_scale(d: np.ndarray, ls: np.ndarray, factor: float) -> np.ndarray:
    """d * (0.5 + ls) * factor, each product rounded to float32 as ggml does."""
    return d * (np.float32(0.5) + ls.astype(np.float32)) * np.float32(factor)


def dequantize_iq2_xxs(blocks: np.ndarray) -> np.ndarray:
    """d:f16 · 8 x (4 grid indices:u8, u32 of 4 x 7 sign bits + 4-bit scale) ; groups of 8 values."""
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    words = _u32(blocks, 2, 16).reshape(n, 8, 2)
    db = _quarter_scale(d, words[:, :, 1] >> 28, 0.25)                                  # [n, 8]
    idx = words[:, :, 0].copy().view(np.uint8).reshape(n, 8, 4)                        # [n, 8, 4]
    signs = KSIGNS[(words[:, :, 1:2] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & 127]
    values = db[:, :, None, None] * IQ2XXS_GRID[idx] * _sign_bits(signs)
    return values.reshape(n, 256)


def dequantize_iq2_xs(blocks: np.ndarray) -> np.ndarray:
    """d:f16 · qs[32]:u16 (9-bit grid index, 7 sign bits) · scales[8] (two 4-bit scales per 32)."""
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    qs = _u16(blocks, 2, 32).reshape(n, 8, 4)
    scales = blocks[:, 66:74]
    ls = np.stack([scales & 0x0F, scales >> 4], axis=2)                                # [n, 8, 2]
    db = _quarter_scale(d[:, :, None], ls, 0.25)[:, :, [0, 0, 1, 1]]                    # [n, 8, 4]
    values = db[..., None] * IQ2XS_GRID[qs & 511] * _sign_bits(KSIGNS[qs >> 9])
    return values.reshape(n, 256)


def dequantize_iq2_s(blocks: np.ndarray) -> np.ndarray:
    """d:f16 · qs[32] (grid index low 8 bits) · signs[32] · qh[8] (2 high bits per index) · scales[8]."""
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    qh = blocks[:, 66:74]
    high = (qh[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3                # [n, 8, 4]
    idx = blocks[:, 2:34].reshape(n, 8, 4).astype(np.int32) | (high.astype(np.int32) << 8)
    scales = blocks[:, 74:82]
    ls = np.stack([scales & 0x0F, scales >> 4], axis=2)
    db = _quarter_scale(d[:, :, None], ls, 0.25)[:, :, [0, 0, 1, 1]]
    values = db[..., None] * IQ2S_GRID[idx] * _sign_bits(blocks[:, 34:66].reshape(n, 8, 4))
    return values.reshape(n, 256)


def dequantize_iq3_xxs(blocks: np.ndarray) -> np.ndarray:
    """d:f16 · qs[64] (one 4-value grid index per byte) · 8 x u32 (4 x 7 sign bits + 4-bit scale)."""
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    aux = _u32(blocks, 66, 8)                                                           # [n, 8]
    db = _quarter_scale(d, aux >> 28, 0.5)
    grid = IQ3XXS_GRID[blocks[:, 2:66]].reshape(n, 8, 4, 8)                             # [n, ib, l, j]
    signs = KSIGNS[(aux[:, :, None] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & 127]
    values = db[:, :, None, None] * grid * _sign_bits(signs)
    return values.reshape(n, 256)


def dequantize_iq3_s(blocks: np.ndarray) -> np.ndarray:
    """d:f16 · qs[64] (grid index low 8 bits) · qh[8] (9th bits) · signs[32] · scales[4] (4-bit each);
    x = d*(1 + 2*ls) * grid * sign."""
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    ninth = (blocks[:, 66:74, None] >> np.arange(8, dtype=np.uint8)) & 1                # [n, 8, 8]
    idx = blocks[:, 2:66].astype(np.int32) | (ninth.reshape(n, 64).astype(np.int32) << 8)
    scales = blocks[:, 106:110]
    ls = np.stack([scales & 0x0F, scales >> 4], axis=2).reshape(n, 8)
    db = d * (1 + 2 * ls.astype(np.int32)).astype(np.float32)                           # [n, 8]
    grid = IQ3S_GRID[idx].reshape(n, 8, 32)
    signs = _sign_bits(blocks[:, 74:106]).reshape(n, 8, 32)
    return (db[:, :, None] * grid * signs).reshape(n, 256)


def _iq1(dl: np.ndarray, idx: np.ndarray, negative_delta: np.ndarray) -> np.ndarray:
    """dl [n, 8, 4] * (grid[idx] + delta), delta = -0.125 where negative_delta else 0.125."""
    delta = np.where(negative_delta, -IQ1_DELTA, IQ1_DELTA).astype(np.float32)
    return dl[..., None] * (IQ1S_GRID[idx] + delta[..., None])


def dequantize_iq1_s(blocks: np.ndarray) -> np.ndarray:
    """d:f16 · qs[32] (grid index low 8 bits) · qh[8]:u16 (3 x 3 high bits, 3-bit scale, delta sign)."""
    n = blocks.shape[0]
    d = _f16(blocks, 0)
    qh = _u16(blocks, 34, 8).astype(np.int32)                                          # [n, 8]
    dl = d * (2 * ((qh >> 12) & 7) + 1).astype(np.float32)
    high = (qh[:, :, None] >> np.array([0, 3, 6, 9])) & 7
    idx = blocks[:, 2:34].reshape(n, 8, 4).astype(np.int32) | (high << 8)
    negative = np.broadcast_to(((qh & 0x8000) != 0)[:, :, None], (n, 8, 4))
    return _iq1(np.broadcast_to(dl[:, :, None], (n, 8, 4)), idx, negative).reshape(n, 256)


def dequantize_iq1_m(blocks: np.ndarray) -> np.ndarray:
    """qs[32] · qh[16] (per index: 3 high bits + delta sign) · scales[8] (4 x u16: 3-bit scales,
    and the f16 super-scale spread over the top nibbles of the four u16)."""
    n = blocks.shape[0]
    sc = _u16(blocks, 48, 4).astype(np.int32)                                          # [n, 4]
    d_bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    d = d_bits.astype(np.uint16).view("<f2").astype(np.float32)[:, None, None]
    three_bit = (sc[:, :, None] >> np.array([0, 3, 6, 9])) & 7                            # [n, 4, 4]: ib pair
    dl = d * (2 * three_bit.reshape(n, 8, 2) + 1).astype(np.float32)                     # [n, ib, half]
    dl = dl[:, :, [0, 0, 1, 1]]
    nib = (blocks[:, 32:48].reshape(n, 8, 2, 1) >> np.array([0, 4], dtype=np.uint8)).reshape(n, 8, 4)
    idx = blocks[:, 0:32].reshape(n, 8, 4).astype(np.int32) | ((nib & 7).astype(np.int32) << 8)
    return _iq1(dl, idx, (nib & 8) != 0).reshape(n, 256)
