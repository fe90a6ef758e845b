"""Launchers of norm.cu: RMSNorm and LayerNorm, one block per row."""
from __future__ import annotations

from worker.backend.cuda_runtime import f32, i32


def _block(D: int) -> int:
    return 256 if D >= 256 else 32 * max(1, min(8, (D + 31) // 32))


def rmsnorm(k, x, w, y, rows: int, D: int, eps: float) -> None:
    if rows:
        k._launch("norm.cu", "rmsnorm", rows, _block(D), (x, w, y, i32(D), f32(eps)))


def layernorm(k, x, w, b, y, rows: int, D: int, eps: float) -> None:
    if rows:
        k._launch("norm.cu", "layernorm", rows, _block(D), (x, w, b, y, i32(D), f32(eps)))


RMSNORM_Q8_BLOCKS_PER_WARP = 8        # norm.cu: 32-value blocks a warp of rmsnorm_q8 keeps in registers
RMSNORM_Q8_MAX_D = 32 * 32 * RMSNORM_Q8_BLOCKS_PER_WARP


def rmsnorm_q8(k, x, w, y, xq, xds, terms: int, rows: int, D: int, eps: float) -> None:
    """rmsnorm, also writing y as int8 activation blocks (vecdot.py's layout); D % 32 == 0."""
    if not rows:
        return
    if D <= RMSNORM_Q8_MAX_D:                 # the row in registers: a warp per 32-value block (up to 32 warps)
        k._launch("norm.cu", "rmsnorm_q8", rows, 32 * min(32, D // 32),
                  (x, w, y, xq, xds, i32(D), f32(eps), i32(rows), i32(terms)))
    else:
        k._launch("norm.cu", "rmsnorm_q8_wide", rows, _block(D),
                  (x, w, y, xq, xds, i32(D), f32(eps), i32(rows), i32(terms)))
