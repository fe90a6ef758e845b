"""Launchers of vecdot.cu: decode products (T <= 4 tokens) on int8-quantized activations.

    xq, xds = activation_buffers(k, rows, K)          # or preallocated ones (a captured graph)
    quantize(k, x, xq, xds, rows, K, terms)           # once per product input
    mmvq(k, w.format, raw, w.row_bytes, xq, xds, y, N, K, T, terms, bias=b)     # residual=r: y = r + (W x + b)
    mmvq_segments(k, xq, xds, K, T, terms, [(fmt, raw, row_bytes, N, bias, y), ...])   # q, k, v in one launch
    mmvq_swiglu(k, fmt, gate_raw, up_raw, row_bytes, xq, xds, y, yq, yds, F, K, T, terms)   # gate, up, SwiGLU
                                                      # (expert slots: a MoE token's chosen experts)

Geometry (latency: a decode product is a few microseconds, alone on the GPU): one warp a row, a row
longer than MMVQ_ONE_WARP_BLOCKS blocks of 32 (4096 values) split over several warps (mmvq_parts), several
rows a warp for products of many rows (mmvq_joint_<fmt>); every kernel sums a row in the same order for
the same K.

`terms` is how many int8 terms carry the activations: 2 (the default path) keeps them to about
1/32000 of each 32-value block's range, close to float32 products; 1 is llama.cpp's Q8_1 (its
test-backend-ops holds quantized products to an NMSE of 5e-4).
"""
from __future__ import annotations

import os

import numpy as np

from worker.backend.cuda_runtime import NULL, f32, i32, i64

VECDOT_FORMATS = frozenset({"q4_0", "q4_1", "q5_0", "q8_0", "mxfp4", "q4_k", "q5_k", "q6_k"})   # vecdot.cuh
MMVQ_MAX_T = 4                        # must match vecdot.cuh
MMVQ_MAX_SEGMENTS = 3                 # products of one input in one launch (vecdot.cuh)
MMVQ_FORMAT_CODES = {"q4_0": 0, "q4_1": 1, "q5_0": 2, "q8_0": 3, "mxfp4": 4, "q4_k": 5, "q5_k": 6, "q6_k": 7}
MMVQ_ROWS_PER_BLOCK = 4               # output rows a block (vecdot.cu)
MMVQ_MAX_PARTS = 4                    # warps a row at most (vecdot.cu: 512-thread blocks, 128 registers a thread)
# A row is split over ceil(K/32 / MMVQ_LANE_BLOCKS) warps, so that a lane walks at most about two of its
# 32-value blocks (latency: each is a chain of dependent loads); M0_CUDA_MMVQ_LANE_BLOCKS=100000 keeps
# one warp a row, to compare on the GPU. The split changes the order of a row's sum (mmvq_parts).
MMVQ_LANE_BLOCKS = int(os.environ.get("M0_CUDA_MMVQ_LANE_BLOCKS", "64"))
# Rows of up to this many 32-value blocks stay on one warp (M0_CUDA_MMVQ_ONE_WARP_BLOCKS, to compare): on the
# H200 a GPT-OSS decode step (K = 2880 and 4096) took 2.85 ms with one warp a row against 3.29 ms split over
# 2, while Qwen2.5's K = 4864 (152 blocks) gains from its split over 3; 128 keeps both as measured best.
MMVQ_ONE_WARP_BLOCKS = int(os.environ.get("M0_CUDA_MMVQ_ONE_WARP_BLOCKS", "128"))
# mmvq_joint_<fmt>: rows a warp walks together (vecdot.cu), for products of at least MMVQ_JOINT_MIN_N rows
# (an output product over the vocabulary: several waves of one-row warps otherwise)
MMVQ_JOINT_ROWS = {"q4_0": 4, "q4_1": 4, "q5_0": 4, "q8_0": 4, "mxfp4": 4, "q4_k": 2, "q5_k": 2}
MMVQ_JOINT_MIN_N = 16384
MMVQ_SWIGLU_WARPS = 16                # mmvq_swiglu: warps sharing a block's 64 rows (32 of gate, 32 of up)
# Formats whose mmvq_swiglu takes the two-blocks-an-SM instance, mmvq_swiglu_x2_<fmt> (vecdot.cu; at most 64
# registers a thread, spill-free for Q5_0 and Q8_0): Qwen2.5's 152 blocks are one wave of 132 SMs rather than
# two. MXFP4 spills 120 bytes a thread there and is still faster (H200, bench_matvec --variants: GPT-OSS's four
# expert slots 29.5 -> 25.3 us; Qwen2.5's Q5_0 9.8 -> 7.4 us).
# M0_CUDA_SWIGLU_X2: a comma-separated list of formats, "all" or "none", to compare on the GPU.
_SWIGLU_X2 = os.environ.get("M0_CUDA_SWIGLU_X2", "q5_0,q8_0,mxfp4")
MMVQ_SWIGLU_X2 = VECDOT_FORMATS if _SWIGLU_X2 == "all" else frozenset(f for f in _SWIGLU_X2.split(",") if f != "none")
QUANT_BLOCK = 32
QUANTIZE_WARPS = 8                    # 32-value blocks quantized per thread block


def mmvq_parts(K: int) -> int:
    """Warps one row of K values is split over (every kernel of vecdot.cu sums a row in the same order
    for the same K, so fused products equal mmvq's bit for bit)."""
    blocks = K // QUANT_BLOCK
    if blocks <= MMVQ_ONE_WARP_BLOCKS:
        return 1
    return max(1, min(MMVQ_MAX_PARTS, -(-blocks // max(1, MMVQ_LANE_BLOCKS))))


def activation_buffers(k, rows: int, K: int, spare: bool = False):
    """Workspace for `rows` quantized activation rows of K values: xq (int8, two terms), xds (float32 x4).
    spare: a second pair, for a kernel that reads one quantized input and writes another (mmvq_swiglu).

    The views are kept per shape while the workspace buffers stay the same (a decode step asks
    for them a few hundred times; slicing a CuPy array costs microseconds of host time)."""
    names = ("q8_activations_spare", "q8_scales_spare") if spare else ("q8_activations", "q8_scales")
    views = k.__dict__.setdefault("_q8_views", {})
    hit = views.get((rows, K, spare))
    if hit is not None and k._workspace.get(names[0]) is hit[0] and k._workspace.get(names[1]) is hit[1]:
        k.graphs.hold(hit[0], hit[1])             # as _scratch does: a captured graph keeps what it reads
        return hit[2], hit[3]
    xq = k._scratch(names[0], (2 * rows * K + 3) // 4).view(np.int8)[: 2 * rows * K]
    xds = k._scratch(names[1], rows * (K // QUANT_BLOCK) * 4)
    views[(rows, K, spare)] = (k._workspace[names[0]], k._workspace[names[1]], xq, xds)
    return xq, xds


def quantize(k, x, xq, xds, rows: int, K: int, terms: int = 2) -> None:
    """x [rows, K] float32 (K a multiple of 32) -> xq [terms, rows, K] int8 and xds [rows, K/32, 4].
    Forgets what the workspace held (quantized_input registers the new contents)."""
    k._q8_last = None
    n_blocks = rows * (K // QUANT_BLOCK)
    if n_blocks:
        k._launch("vecdot.cu", "quantize_q8", (n_blocks + QUANTIZE_WARPS - 1) // QUANTIZE_WARPS, 32 * QUANTIZE_WARPS,
                  (x, xq, xds, i32(K), i32(rows), i32(terms)), keeps_quantized_input=True)


def mmvq(k, fmt: str, raw, row_bytes: int, xq, xds, y, N: int, K: int, T: int, terms: int = 2, *,
         bias=None, bias_per_expert: bool = False, slots: int = 1, expert_ids=None, expert_bytes: int = 0,
         x_per_slot: bool = False, quantized_rows: int | None = None, residual=None) -> None:
    """y[j, t, n] = xq[t (+ j T)] . W_e[n] (+ bias) for slots j < `slots`, e = expert_ids[j] (device int32)
    or j; raw: the whole [E, N, K] (or [N, K]) weight bytes. quantized_rows: rows quantize() wrote
    (the term stride; default T, or slots * T with x_per_slot). residual: a float32 array shaped like y,
    added in the epilogue (y = residual + (W x + b), as add(residual, product) rounds it)."""
    if T > MMVQ_MAX_T:
        raise ValueError(f"mmvq handles at most {MMVQ_MAX_T} tokens, got {T}")
    rows = quantized_rows if quantized_rows is not None else (slots * T if x_per_slot else T)
    parts = mmvq_parts(K)
    joint = MMVQ_JOINT_ROWS.get(fmt, 1) if parts == 1 and N >= MMVQ_JOINT_MIN_N else 1
    rows_per_block = MMVQ_ROWS_PER_BLOCK * joint
    grid, block = ((N + rows_per_block - 1) // rows_per_block, slots), 32 * MMVQ_ROWS_PER_BLOCK * parts
    ids, b, r = (NULL if a is None else a for a in (expert_ids, bias, residual))
    if joint > 1:                                   # several rows a warp (the same arguments)
        k._launch("vecdot.cu", f"mmvq_joint_{fmt}", grid, block,
                  (raw, i64(row_bytes), i64(expert_bytes), ids, xq, xds, i64(rows * K), i32(x_per_slot), b,
                   i32(bias_per_expert), r, y, i32(N), i32(K), i32(T), i32(terms), i32(parts)),
                  keeps_quantized_input=True)
    else:
        k._launch("vecdot.cu", f"mmvq_{fmt}", grid, block,
                  (raw, i64(row_bytes), i64(expert_bytes), ids, xq, xds, i64(rows * K), i32(x_per_slot), b,
                   i32(bias_per_expert), r, y, i32(N), i32(K), i32(T), i32(terms), i32(parts)),
                  keeps_quantized_input=True)


def mmvq_segments(k, xq, xds, K: int, T: int, terms: int, segments: list) -> None:
    """Several products of one quantized input [T, K] in one launch: segments are
    (fmt, raw, row_bytes, N, bias or None, y [T, N]), at most MMVQ_MAX_SEGMENTS of them."""
    if T > MMVQ_MAX_T or not 0 < len(segments) <= MMVQ_MAX_SEGMENTS:
        raise ValueError(f"mmvq_segments: T={T} (at most {MMVQ_MAX_T}), {len(segments)} segments")
    args, end = [], 0
    for fmt, raw, row_bytes, N, bias, y in segments:
        end += (N + MMVQ_ROWS_PER_BLOCK - 1) // MMVQ_ROWS_PER_BLOCK
        args.append((raw, row_bytes, NULL if bias is None else bias, y, N, MMVQ_FORMAT_CODES[fmt], end))
    while len(args) < MMVQ_MAX_SEGMENTS:          # unused segments: no rows, past the last block
        args.append((NULL, 0, NULL, NULL, 0, 0, end))
    (w0, rb0, b0, y0, n0, f0, e0), (w1, rb1, b1, y1, n1, f1, e1), (w2, rb2, b2, y2, n2, f2, _) = args
    if end:
        parts = mmvq_parts(K)
        k._launch("vecdot.cu", "mmvq_segments", end, 32 * MMVQ_ROWS_PER_BLOCK * parts,
                  (xq, xds, i64(T * K), i32(K), i32(T), i32(terms), i32(parts),
                   w0, i64(rb0), b0, y0, i32(n0), i32(f0), i32(e0),
                   w1, i64(rb1), b1, y1, i32(n1), i32(f1), i32(e1),
                   w2, i64(rb2), b2, y2, i32(n2), i32(f2)), keeps_quantized_input=True)


def mmvq_swiglu(k, fmt: str, gate_raw, up_raw, row_bytes: int, xq, xds, y, yq, yds, F: int, K: int, T: int,
                terms: int = 2, *, slots: int = 1, expert_ids=None, expert_bytes: int = 0, bias_gate=None,
                bias_up=None, clamped: bool = False, limit: float | None = None, alpha: float | None = None) -> None:
    """y [slots, T, F] = swiglu(xq . Wgate_e^T + bg_e, xq . Wup_e^T + bu_e) in one launch (F % 32 == 0), also
    written as int8 activation blocks yq/yds (term stride slots T F; buffers other than xq/xds:
    output_buffers_besides). Slot j uses expert e = expert_ids[j] (device int32) or j of stacked [E, F, K]
    weights (expert_bytes apart) and biases [E, F]; clamped: GPT-OSS's swiglu_clamped(limit, alpha)."""
    if T > MMVQ_MAX_T or F % QUANT_BLOCK:
        raise ValueError(f"mmvq_swiglu: T={T} (at most {MMVQ_MAX_T}), F={F} (a multiple of {QUANT_BLOCK})")
    if not (F and slots):
        return
    ids, bg, bu = (NULL if a is None else a for a in (expert_ids, bias_gate, bias_up))
    alpha = 1.0 if alpha is None else alpha
    if fmt in MMVQ_SWIGLU_X2:                       # two blocks an SM (the same sums)
        k._launch("vecdot.cu", f"mmvq_swiglu_x2_{fmt}", (F // QUANT_BLOCK, slots), 32 * MMVQ_SWIGLU_WARPS,
                  (gate_raw, up_raw, i64(row_bytes), i64(expert_bytes), ids, bg, bu, xq, xds, y, yq, yds, i32(F),
                   i32(K), i32(T), i32(terms), i32(mmvq_parts(K)), i32(1 if clamped else 0), i32(limit is not None),
                   f32(limit or 0.0), f32(alpha)))
    else:
        k._launch("vecdot.cu", f"mmvq_swiglu_{fmt}", (F // QUANT_BLOCK, slots), 32 * MMVQ_SWIGLU_WARPS,
                  (gate_raw, up_raw, i64(row_bytes), i64(expert_bytes), ids, bg, bu, xq, xds, y, yq, yds, i32(F),
                   i32(K), i32(T), i32(terms), i32(mmvq_parts(K)), i32(1 if clamped else 0), i32(limit is not None),
                   f32(limit or 0.0), f32(alpha)))


def output_buffers_besides(k, xq, rows: int, D: int):
    """(yq, yds) for a kernel's quantized output [rows, D] while it reads the quantized input xq: the
    workspace pair that does not hold xq."""
    yq, yds = activation_buffers(k, rows, D, spare=True)
    if yq.data.ptr == xq.data.ptr:
        yq, yds = activation_buffers(k, rows, D)
    return yq, yds


def fused_output_buffers(k, rows: int, D: int):
    """(xq, xds, terms) for a producer kernel (rmsnorm_q8, swiglu_q8) that also writes its [rows, D]
    output as int8 activation blocks, or None where the decode products would not use them."""
    terms = int(getattr(k, "matvec_terms", 0))
    if not terms or not 0 < rows <= MMVQ_MAX_T or D % QUANT_BLOCK:
        return None
    return (*activation_buffers(k, rows, D), terms)


def remember_quantized(k, y, rows: int, D: int, xq, xds, terms: int) -> None:
    """Record that (xq, xds) hold y [rows, D] quantized (written by the launch just made)."""
    k._q8_last = (y, y.data.ptr, rows, D, terms, getattr(k, "launch_serial", None), xq, xds)


def quantized_input(k, x, x2, T: int, K: int, terms: int):
    """(xq, xds) for activations x [T, K] (x2: its 2-D view): quantized now, or the buffers of the
    previous call when x is the same array and no other kernel has run since (the q, k, v products
    of one normed input; gate and up). `k.launch_serial` counts the launches that may write one."""
    last = getattr(k, "_q8_last", None)
    serial = getattr(k, "launch_serial", None)
    if last is not None and serial is not None and last[0] is x and last[1:6] == (x2.data.ptr, T, K, terms, serial):
        return last[-2], last[-1]
    xq, xds = activation_buffers(k, T, K)
    quantize(k, x2, xq, xds, T, K, terms)
    k._q8_last = (x, x2.data.ptr, T, K, terms, serial, xq, xds)
    return xq, xds


def uses_int8_activations(k, fmt: str, T: int) -> int:
    """The int8 terms backend `k` uses for a product of format `fmt` at T tokens (0: the float matvec)."""
    terms = int(getattr(k, "matvec_terms", 0))
    return terms if fmt in VECDOT_FORMATS and T <= MMVQ_MAX_T else 0
