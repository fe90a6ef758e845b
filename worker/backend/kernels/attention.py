"""Launcher of attention.cu: causal attention over the KV cache, storing the step's K/V rows into it.

The first position comes either as a value (`start_pos`) or from device memory (`start_pos_dev`,
an int32 pointer, NULL otherwise): a captured decode graph reads it there, so one graph serves
every step.
"""
from __future__ import annotations

from worker.backend.cuda_runtime import NULL, f32, i32

ATT_MAX_HEAD_DIM = 256                # must match attention.cu


def attention(k, kvt: str, q, k_new, v_new, k_cache, v_cache, sinks, out, T: int, H: int, KVH: int, hd: int,
              start_pos: int, start_pos_dev, window: int, scale: float, q8=None) -> None:
    """out = attention of q over cache rows [.., start + T) after storing k_new/v_new at rows [start, start + T).
    q8: (xq, xds, terms) to also write out as int8 activation blocks (vecdot.py; T <= 4, hd % 32 == 0)."""
    xq, xds, terms = q8 if q8 is not None else (NULL, NULL, 0)
    warps = 8 if T == 1 else 4
    k._launch("attention.cu", f"attention_{kvt}", T * H, 32 * warps,
              (q, k_new, v_new, k_cache, v_cache, sinks, out, xq, xds, i32(terms), i32(T), i32(H), i32(KVH), i32(hd),
               i32(start_pos), start_pos_dev, i32(window), f32(scale)))
