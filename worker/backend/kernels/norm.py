"""Launchers of norm.cu: RMSNorm and LayerNorm, one block per row."""
from __future__ import annotations

from worker.backend.cuda_runtime import NULL, f32, i32


def _block(D: int) -> int:
    return 256 if D >= 256 else 32 * max(1, min(8, (D + 31) // 32))


def rmsnorm(k, x, w, y, rows: int, D: int, eps: float) -> None:
    """y = x / sqrt(mean(x^2) + eps) * w, a block a row: rows whose 32-value blocks rmsnorm_q8 keeps in
    registers take it without its int8 output (one read of the row), others rmsnorm (two)."""
    if not rows:
        return
    warps = _warps_in_registers(k, D)
    if warps:
        k._launch("norm.cu", "rmsnorm_q8", rows, 32 * warps, (x, w, y, NULL, NULL, i32(D), f32(eps), i32(rows), i32(0)))
    else:
        k._launch("norm.cu", "rmsnorm", rows, _block(D), (x, w, y, i32(D), f32(eps)))


def layernorm(k, x, w, b, y, rows: int, D: int, eps: float) -> None:
    if rows:
        k._launch("norm.cu", "layernorm", rows, _block(D), (x, w, b, y, i32(D), f32(eps)))


RMSNORM_Q8_BLOCKS_PER_WARP = 8        # norm.cu: 32-value blocks a warp of rmsnorm_q8 keeps in registers
RMSNORM_Q8_MAX_D = 32 * 32 * RMSNORM_Q8_BLOCKS_PER_WARP


def _warps_allowed(k, name: str) -> int:
    """Warps a block of kernel `name` may have: its registers bound the block (a 1024-thread block needs
    64 registers a thread at most), as the driver reports once the module is compiled."""
    known = k.__dict__.setdefault("_norm_warps", {})
    if name not in known:
        fn = getattr(k, "_fn", None)
        limit = getattr(fn("norm.cu", name), "max_threads_per_block", 1024) if fn else 1024
        known[name] = max(1, min(32, int(limit) // 32))
    return known[name]


def _warps_in_registers(k, D: int) -> int:
    """Warps of an rmsnorm_q8 block that keeps a row of D values in registers (a warp per 32-value block or a
    few), 0 where the row does not fit or D is not whole blocks."""
    warps = min(D // 32, _warps_allowed(k, "rmsnorm_q8"))
    return warps if D % 32 == 0 and D <= 32 * RMSNORM_Q8_BLOCKS_PER_WARP * warps else 0


def rmsnorm_q8(k, x, w, y, xq, xds, terms: int, rows: int, D: int, eps: float) -> None:
    """rmsnorm, also writing y as int8 activation blocks (vecdot.py's layout); D % 32 == 0."""
    if not rows:
        return
    warps = _warps_in_registers(k, D)
    if warps:
        k._launch("norm.cu", "rmsnorm_q8", rows, 32 * warps,
                  (x, w, y, xq, xds, i32(D), f32(eps), i32(rows), i32(terms)))
    else:
        k._launch("norm.cu", "rmsnorm_q8_wide", rows, _block(D),
                  (x, w, y, xq, xds, i32(D), f32(eps), i32(rows), i32(terms)))
