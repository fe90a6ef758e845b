"""Launcher of rope.cu: rotary embedding from cos/sin tables, one thread per rotated pair or passed value."""
from __future__ import annotations

from worker.backend.cuda_runtime import i32


def rope(k, x, y, cos, sin, positions_dev, pos_base: int, T: int, H: int, head_dim: int, dim: int,
         neox: bool) -> None:
    """Token t sits at positions_dev[t] (int32 device array) or, with positions_dev NULL, pos_base + t."""
    total = T * H * (dim // 2 + (head_dim - dim))
    if total:
        k._launch("rope.cu", "rope", (total + 255) // 256, 256,
                  (x, y, cos, sin, positions_dev, i32(pos_base), i32(T), i32(H), i32(head_dim), i32(dim),
                   i32(1 if neox else 0)))
