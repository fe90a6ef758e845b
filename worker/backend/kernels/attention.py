"""Launcher of attention.cu: causal attention over the KV cache, storing the step's K/V rows into it.

Up to DECODE_MAX_T tokens (decode) run flash decoding: a block serves `decode_rows(...)` (query head, token)
rows of one KV head's group, the keys split over `decode_splits(n_ctx)` blocks, merged inside the
same launch (a single active chunk writes the output directly); longer inputs (prefill) run the tiled kernel.
The first position comes either as a value (`start_pos`) or from device memory (`start_pos_dev`,
an int32 pointer, NULL otherwise): a captured decode graph reads it there, so one graph serves
every step. The number of splits depends on the cache's size only, never on the position.
"""
from __future__ import annotations

import math
import os

import numpy as np

from worker.backend.cuda_runtime import NULL, f32, i32, process_allocations

ATT_MAX_HEAD_DIM = 256                # must match attention.cu
DECODE_MAX_T = 4                      # ATT_DECODE_MAX_T
DECODE_WARPS = 8                      # ATT_DECODE_WARPS
MAX_SPLITS = 64                       # key chunks a row group on the decode path, at most
SPLIT_POSITIONS = 256                 # cache positions a split
MIN_CHUNK = 256                       # ATT_DECODE_MIN_CHUNK: keys a chunk, at least (the kernel's choice)
DECODE_ROWS = 8                       # ATT_DECODE_ROWS: (head, token) rows a decode block, at most
DECODE_ROWS_FEW = 4                   # ATT_DECODE_ROWS_FEW: at most for hd > 128; at least for T > 1
# Rows a decode block (M0_CUDA_ATT_DECODE_ROWS, to compare on the GPU): "auto" (few rows a block until the
# grid has DECODE_TARGET_BLOCKS blocks), "group" (whole groups of 8 rows, or 4 where a group has 4 or
# fewer or heads are 256 wide: one block a KV head for Qwen2.5's and GPT-OSS's decode steps), or 1, 2, 4, 8.
DECODE_ROWS_CHOICE = os.environ.get("M0_CUDA_ATT_DECODE_ROWS", "auto")
DECODE_TARGET_BLOCKS = 128            # about one block an SM of an H200 (132 SMs)
COUNTERS = "attention_split_counters"


def decode_splits(n_ctx: int) -> int:
    """Blocks a head for a decode step on a cache of n_ctx positions."""
    return max(1, min(MAX_SPLITS, -(-n_ctx // SPLIT_POSITIONS)))


def decode_rows(hd: int, rows: int, T: int = 1, blocks_a_row_group: int = 1, choice: str | None = None) -> int:
    """(query head, token) rows a decode block serves when a KV head has `rows` of them (T x group);
    blocks_a_row_group: key splits x KV heads. attention_decode_<kvt> reads the choice back from the grid
    (the smallest of its instances, 1, 2, 4 or 8 rows, that holds rows / row groups).

    A decode step at a short context is a few blocks, each a chain of dependent steps whose length grows
    with its rows; fewer rows a block give more, shorter blocks, each reading the group's K/V again (from
    L2 mostly). "auto" halves the rows a block while the grid has fewer than DECODE_TARGET_BLOCKS blocks."""
    choice = DECODE_ROWS_CHOICE if choice is None else choice
    most = DECODE_ROWS_FEW if hd > 128 else DECODE_ROWS
    least = DECODE_ROWS_FEW if T > 1 else 1            # several tokens: the kernel has blocks of 4 or 8 only
    if choice == "group":
        return DECODE_ROWS_FEW if hd > 128 or rows <= DECODE_ROWS_FEW else DECODE_ROWS
    if choice != "auto":
        return max(least, min(most, int(choice)))
    rb = most
    while rb > least and (rb >= 2 * rows or blocks_a_row_group * -(-rows // rb) < DECODE_TARGET_BLOCKS):
        rb //= 2
    return rb


def decode_grid(n_ctx: int, T: int, H: int, KVH: int, hd: int, choice: str | None = None) -> tuple[int, int]:
    """(splits, KV heads x row groups): the decode kernel's grid, from the cache size and the shapes only."""
    rows, splits = (H // KVH) * T, decode_splits(n_ctx)
    return splits, KVH * -(-rows // decode_rows(hd, rows, T, splits * KVH, choice))


def decodes(T: int, hd: int) -> bool:
    """Whether T tokens of head_dim hd take the flash-decoding kernel (its vector loads need hd % 8 == 0)."""
    return T <= DECODE_MAX_T and hd % 8 == 0


SHORT_PREFILL = 1024                  # up to this many tokens, 64-wide heads take 32-query tiles


def prefill_tile(hd: int, T: int) -> tuple[int, int]:
    """(queries a block, threads a block) of the tiled kernel for head_dim hd and T tokens (attention.cu's
    tile shapes). Short inputs of 64-wide heads take half-height tiles: twice the blocks, since 64-query
    tiles would leave SMs idle (T = 512 on 14 heads: 112 blocks on an H200's 132 SMs)."""
    if hd <= 64:
        return (32, 128) if T <= SHORT_PREFILL else (64, 128)
    return (32, 128) if hd <= 128 else (16, 64)


def split_counters(k, n: int, capturing: bool):
    """The int32 tickets of the decode merge, zero between launches (the merging block resets its own).

    Zeroed once on the stream; a buffer first zeroed inside a graph capture is zeroed again by the
    next eager call, since the captured memset runs only when the graph does."""
    buf = k._workspace.get(COUNTERS)
    if buf is None or buf.size < n:
        k._workspace.pop(COUNTERS, None)
        with process_allocations():                # persistent: never from a captured graph's pool
            buf = k._allocate(f"workspace {COUNTERS}", (max(n, 64),), np.int32)
        k._workspace[COUNTERS] = buf
        k._split_counters_zeroed = False
    if not getattr(k, "_split_counters_zeroed", False):
        buf.fill(0)
        k._split_counters_zeroed = not capturing
    k.graphs.hold(buf)
    return buf


def attention(k, kvt: str, q, k_new, v_new, k_cache, v_cache, sinks, out, T: int, H: int, KVH: int, hd: int,
              start_pos: int, start_pos_dev, window: int, scale: float, *, n_ctx: int, rope=None,
              q8=None, kv_table=NULL, layer: int = 0) -> None:
    """out = attention of q over cache rows [.., start + T) after storing k_new/v_new at rows [start, start + T).
    rope: (cos, sin, dim, neox) to rotate q and the step's keys here (the tables of CudaBackend._rope_table;
    both kernels take them; CudaBackend.attention passes them on the decode path, where they save launches).
    q8: (xq, xds, terms) to also write out as int8 activation blocks (vecdot.py; decode only, hd % 32 == 0).
    kv_table: NULL, or a device uint64 table of every layer's K and V addresses (K of layer l at 2l, V at
    2l + 1): the kernel then reads this layer's cache from it rather than from k_cache / v_cache (a captured
    graph serves any cache of its shape, cuda_graph.py). n_ctx then is the largest cache the launch serves:
    it sets the decode grid only (the kernel bounds its keys by the position, never by the capacity)."""
    cos, sin, rope_dim, neox = rope if rope is not None else (NULL, NULL, 0, False)
    scale_log2 = scale * math.log2(math.e)
    if decodes(T, hd):
        xq, xds, terms = q8 if q8 is not None else (NULL, NULL, 0)
        grid = decode_grid(n_ctx, T, H, KVH, hd)
        part = k._scratch("attention_partials", H * grid[0] * T * (hd + 2))
        counters = split_counters(k, grid[1], start_pos_dev is not NULL)
        k._launch("attention.cu", f"attention_decode_{kvt}", grid, 32 * DECODE_WARPS,
                  (q, k_new, v_new, k_cache, v_cache, sinks, out, cos, sin, i32(rope_dim), i32(1 if neox else 0),
                   i32(T), i32(H), i32(KVH), i32(hd), i32(start_pos), start_pos_dev, i32(window), f32(scale_log2),
                   kv_table, i32(layer), part, counters, xq, xds, i32(terms)))
        return
    if q8 is not None:
        raise ValueError("the int8 side output is written on the decode path only")
    queries, threads = prefill_tile(hd, T)
    grid = -(-T // queries) * H                  # query tiles x heads, in one dimension (attention.cu)
    # one kernel a tile shape (attention.cu): the shape's registers set its occupancy
    if hd <= 64 and queries == 32:
        k._launch("attention.cu", f"attention_prefill_q32_{kvt}", grid, threads,
                  (q, k_new, v_new, k_cache, v_cache, sinks, out, cos, sin, i32(rope_dim), i32(1 if neox else 0),
                   i32(T), i32(H), i32(KVH), i32(hd), i32(start_pos), start_pos_dev, i32(window), f32(scale_log2),
                   kv_table, i32(layer)))
    elif hd <= 64:
        k._launch("attention.cu", f"attention_prefill_{kvt}", grid, threads,
                  (q, k_new, v_new, k_cache, v_cache, sinks, out, cos, sin, i32(rope_dim), i32(1 if neox else 0),
                   i32(T), i32(H), i32(KVH), i32(hd), i32(start_pos), start_pos_dev, i32(window), f32(scale_log2),
                   kv_table, i32(layer)))
    elif hd <= 128:
        k._launch("attention.cu", f"attention_prefill_d128_{kvt}", grid, threads,
                  (q, k_new, v_new, k_cache, v_cache, sinks, out, cos, sin, i32(rope_dim), i32(1 if neox else 0),
                   i32(T), i32(H), i32(KVH), i32(hd), i32(start_pos), start_pos_dev, i32(window), f32(scale_log2),
                   kv_table, i32(layer)))
    else:
        k._launch("attention.cu", f"attention_prefill_d256_{kvt}", grid, threads,
                  (q, k_new, v_new, k_cache, v_cache, sinks, out, cos, sin, i32(rope_dim), i32(1 if neox else 0),
                   i32(T), i32(H), i32(KVH), i32(hd), i32(start_pos), start_pos_dev, i32(window), f32(scale_log2),
                   kv_table, i32(layer)))
