"""Launchers of attention.cu: K/V store into the cache and causal attention over it.

Both take the first position either as a value (`start_pos`) or from device memory
(`start_pos_dev`, an int32 pointer, NULL otherwise): a captured decode graph reads it there, so
one graph serves every step.
"""
from __future__ import annotations

from worker.backend.cuda_runtime import elementwise_grid, f32, i32, i64

ATT_MAX_HEAD_DIM = 256                # must match attention.cu


def kv_store(k, kvt: str, src, cache, start_pos_dev, start_pos: int, row: int, n: int) -> None:
    """cache[(start + i // row) * row + i % row] = src[i] for i < n (row = n_kv_heads * head_dim)."""
    k._launch("attention.cu", f"kv_store_{kvt}", elementwise_grid(n), 256,
              (src, cache, start_pos_dev, i64(start_pos), i64(row), i64(n)))


def attention(k, kvt: str, q, k_cache, v_cache, sinks, out, T: int, H: int, KVH: int, hd: int,
              start_pos: int, start_pos_dev, window: int, scale: float) -> None:
    warps = 8 if T == 1 else 4
    k._launch("attention.cu", f"attention_{kvt}", T * H, 32 * warps,
              (q, k_cache, v_cache, sinks, out, i32(T), i32(H), i32(KVH), i32(hd), i32(start_pos), start_pos_dev,
               i32(window), f32(scale)))
