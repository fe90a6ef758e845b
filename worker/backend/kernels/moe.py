"""Launchers of moe.cu and moe_gemm.cu: expert routing (top-k + softmax), the prefill's grouping of
token-expert pairs by expert, its grouped expert products, and the weighted sums of the chosen experts."""
from __future__ import annotations

import os

from worker.backend.cuda_runtime import NULL, f32, i32, i64

MOE_PLAN_THREADS = 1024               # must match moe.cu
MOE_MAX_EXPERTS = 256                 # experts moe_plan's shared tables hold (moe.cu)
MOE_TILE_ROWS = (16, 32, 64)          # sorted rows a tile, the heights moe_gemm.cu serves (its MOE_BM: the most)
# The grouped products' kernels (moe_gemm.cu): v3 (moe_gate_up_v3_<fmt>, moe_down_v3_<fmt>: 8 warps, 128 columns a
# block, the next k-step's loads behind the current step's products, activations split into TF32 hi/lo once as they
# are stored; every format) and v4: v3 on BF16 tensor cores (m16n8k16) for the formats whose values are bfloat16
# values (MOE_BF16_FORMATS; the others take v3's kernels), activations as two bfloat16 terms (within 2^-18 of each
# value, the products' own conformance row). v4 measured 1.4x faster than v3 on a GPT-OSS-20B-shaped layer (H200,
# benchmarks/bench_moe_prefill.py: 1.44 / 3.38 / 9.46 against 2.00 / 4.76 / 13.4 ms at T = 128 / 512 / 2048).
# M0_CUDA_MOE_GEMM=v3 keeps the TF32 kernels, to compare or fall back. v5: v4's tiles on int8 tensor cores
# (m16n8k32) for MXFP4 (MOE_S8_FORMATS), as llama.cpp's mmq: E2M1 codes as int8 (doubled, exact), activations
# quantized a 32-value block as two int8 terms (vecdot.cuh's, within max|block| / 64516: the conformance row
# matmul_expert_q8x2), two products a k-step where v4 has four. Slower than v4 on the H200 (1.46 against 1.19 ms
# a GPT-OSS-20B-shaped layer at T = 128), so not the default.
# v6: v4 with two 32-value blocks a k-step (K a multiple of 32; a last odd block alone): half the steps,
# their barriers and waits for loads, twice the bytes in flight a step; the same products as v4 (its conformance row).
# On the H200 (bench_moe_prefill.py, GPT-OSS-20B-shaped layer, 32-row tiles) its down launch took 0.397 against v4's
# 0.449 ms at T = 128, 0.918 against 1.010 at 512, 3.09 against 3.35 at 2048; gate/up the same (0.705 / 0.702 ms);
# the whole GPT-OSS-20B-shaped model's pp128 19.3 against 20.2 ms (bench_prefill_paths.py).
# v7: v6 with MXFP4's bfloat16 weight values built from the codes' bits and scaled by an exact bfloat16
# multiply, not through float32 (moe_gemm.cu's moe_mxfp4_bf16_words: a third of the instructions a value); the same
# bfloat16 values, so v6's products and conformance row. On the H200 (bench_moe_prefill.py, 32-row tiles, one run) its
# gate/up launch took 0.577 against v6's 0.711 ms at T = 128 and 1.381 against 1.643 at 512, its down 0.343 against
# 0.401 and 0.800 against 0.915; the whole GPT-OSS-20B-shaped model's pp128 18.65 against 19.64 ms, pp512 58.5 against
# 66.0 (bench_prefill_paths.py, same run). Tried and dropped: v7 with the weight blocks copied by cp.async, a warp's
# copies consecutive words of a few rows (coalesced; two stages): gate/up 0.929 ms at T = 128, slower (ncu: v7's
# gate/up at half the L1 and half the SM throughput, neither saturated).
# v8: v7 with the down product's blocks 256 columns wide (two 128-column halves of one weight: each k-step's staged
# activations, barriers and load waits serve twice the columns, half the blocks), built like gate/up (the same
# accumulators a thread); gate/up is v7's kernel. Why: at T = 128 v7's down launch took 232 us a layer against
# gate/up's 332 for twice the weights (ncu, H200, GPT-OSS-20B-shaped prefill). The default: on the H200 the whole
# GPT-OSS-20B-shaped model's prefill (bench_prefill_paths.py, one run, 7 repeats, two v8 rows around a v7 row) took
# 18.17 / 17.92 against v7's 18.37 ms at 128 tokens, 57.5 / 57.4 against 59.6 at 512, 214.1 / 214.0 against 222.0
# at 2048. One layer of uniformly routed random tokens (bench_moe_prefill.py) put its down launch at 0.355 against
# v7's 0.339 ms at T = 128 and 0.755 against 0.796 at 512: the model's routing, not the layer's, decides.
# Since 417efbc v7 and v8 stage their activations in mma fragment order and each weight block's scale factors once
# (moe_gemm.cu's moe_frag_word, moe_mxfp4_scale_words): the same products with about 30 % fewer instructions; the
# whole GPT-OSS-20B-shaped prefill 15.7 against 18.1 ms at 128 tokens, 50.5 against 57.6 at 512 (H200, one run).
MOE_GEMM_VARIANTS = ("v3", "v4", "v5", "v6", "v7", "v8")
MOE_GEMM_VARIANT = os.environ.get("M0_CUDA_MOE_GEMM", "v8")
MOE_TILE_COLS = 128                   # output columns a block: moe_gemm.cu's MOE_BN
MOE_THREADS = 256                     # moe_gemm.cu's MOE_THREADS
# Formats whose dequantized values are bfloat16 values (moe_gemm.cu's FOR_EACH_MOE_BF16_FORMAT): MXFP4's E2M1 values
# (two significant bits) times a power of two.
MOE_BF16_FORMATS = frozenset({"mxfp4"})
# Formats with v5 kernels (moe_gemm.cu's FOR_EACH_MOE_S8_FORMAT): MXFP4's values are int8 values (doubled E2M1)
# times a block's power of two.
MOE_S8_FORMATS = frozenset({"mxfp4"})
# The formats each variant has its own kernels for; the others take v3's.
_VARIANT_FORMATS = {"v4": MOE_BF16_FORMATS, "v5": MOE_S8_FORMATS, "v6": MOE_BF16_FORMATS, "v7": MOE_BF16_FORMATS,
                    "v8": MOE_BF16_FORMATS}
# The variants on BF16 tensor cores, all with v4's products (conformance row matmul_expert_bf16x2)
MOE_BF16_VARIANTS = frozenset({"v4", "v6", "v7", "v8"})
# Variants whose down blocks take 2 x MOE_TILE_COLS columns (moe_gemm.cu's WIDE), and those that run another
# variant's gate/up kernels
WIDE_DOWN_VARIANTS = frozenset({"v8"})
GATE_UP_KERNELS = {"v8": "v7"}
# Tile heights moe.tile_rows_for chooses from: 32 rows at every T. On the H200 (benchmarks/bench_moe_prefill.py,
# GPT-OSS-20B-shaped layer, v4 with a kernel a height) the gate/up + down launches took 0.71 + 0.45 ms with 32-row
# tiles against 0.73 + 0.54 (16) and 1.50 + 0.72 (64) at T = 128; 1.67 + 1.01 against 2.27 + 1.08 (64) at T = 512;
# 5.64 + 3.33 against 6.39 + 2.95 (64) at T = 2048: a 64-row tile's gate/up kernel needs 182 registers a thread (one
# block an SM), a 32-row one's 120 (two). The kernels and the plan still serve 16 and 64. With v8 the whole
# GPT-OSS-20B-shaped prefill took 21.2 / 71.0 / 271 ms with 16-row tiles against 18.2 / 57.5 / 214 with 32-row ones
# at 128 / 512 / 2048 tokens, and 16 where an expert's share fits, else 32, 21.1 ms at 128 (H200, one run).
MOE_TILE_ROWS_CHOSEN = (32,)
MOE_K_STEP = 32                       # moe_gemm.cu's MOE_BK: K must be a multiple
# Formats with grouped kernels (moe_gemm.cu's FOR_EACH_MOE_FORMAT): the formats with int8 decode products.
MOE_GEMM_FORMATS = frozenset({"q4_0", "q4_1", "q5_0", "q8_0", "mxfp4", "q4_k", "q5_k", "q6_k"})


def route(k, logits, experts, weights, T: int, E: int, n_used: int) -> None:
    """logits [T, E] -> experts [T, n_used] int32 (best first, lower id on ties), weights [T, n_used]."""
    if n_used > 32:
        raise ValueError(f"moe_route picks at most 32 experts a token, got {n_used}")
    k._launch("moe.cu", "moe_route", T, 32, (logits, experts, weights, i32(E), i32(n_used)))


def combine(k, y, weights, out, n_used: int, D: int) -> None:
    """out [D] = sum_j weights[j] * y[j] for the n_used rows of y [n_used, D] (one token)."""
    k._launch("moe.cu", "moe_combine", max(1, min((D + 255) // 256, 1024)), 256, (y, weights, out, i32(n_used), i32(D)))


def tile_rows_for(n_pairs: int, E: int) -> int:
    """The tile height for n_pairs token-expert pairs over E experts: the smallest of MOE_TILE_ROWS_CHOSEN that
    holds an expert's average share (a tile's rows past its expert's run are work thrown away; a taller tile
    reads each weight row for more rows)."""
    share = n_pairs / E
    return next((rows for rows in MOE_TILE_ROWS_CHOSEN if share <= rows), MOE_TILE_ROWS_CHOSEN[-1])


def gemm_variant(variant: str | None = None) -> str:
    """The grouped products' kernel variant: variant, else MOE_GEMM_VARIANT (M0_CUDA_MOE_GEMM)."""
    variant = variant or MOE_GEMM_VARIANT
    if variant not in MOE_GEMM_VARIANTS:
        raise ValueError(f"M0_CUDA_MOE_GEMM={variant!r}: the grouped expert kernels are {MOE_GEMM_VARIANTS}")
    return variant


def kernel_variant(variant: str, fmt: str) -> str:
    """The variant whose kernels run `variant` on `fmt`: v4 or v5 of a format without such kernels is v3."""
    return variant if fmt in _VARIANT_FORMATS.get(variant, {fmt}) else "v3"


# Variants with a kernel a tile height (moe_gemm.cu's DEFINE_MOE_GEMM_HEIGHTS: each height's registers, not the
# tallest one's); v3's kernels take the height as an argument.
PER_HEIGHT_VARIANTS = frozenset({"v4", "v5", "v6", "v7", "v8"})


def _suffix(variant: str, fmt: str, tile_rows: int, gate_up: bool = False) -> str:
    """The kernel names' variant part: moe_gate_up<suffix>_<fmt>, e.g. _v3, _v4_r32."""
    kernels = kernel_variant(variant, fmt)
    kernels = GATE_UP_KERNELS.get(kernels, kernels) if gate_up else kernels
    return f"_{kernels}_r{tile_rows}" if kernels in PER_HEIGHT_VARIANTS else f"_{kernels}"


def max_tiles(n_pairs: int, E: int, tile_rows: int) -> int:
    """Entries of the tile table: every expert's run cut into tile_rows-row tiles needs at most
    ceil(n_pairs / tile_rows) + E of them (each expert adds at most one part-filled tile)."""
    return (n_pairs + tile_rows - 1) // tile_rows + E


def plan(k, experts, order, pos, tiles, n_pairs: int, E: int, n_tiles: int, tile_rows: int,
         threads: int = MOE_PLAN_THREADS) -> None:
    """experts [n_pairs] int32 -> order [n_pairs] (pairs sorted by expert, stable), pos [n_pairs] (its
    inverse) and tiles [n_tiles, 4] int32 (expert, first sorted row, rows, 0), unused entries rows = 0."""
    if not 0 < E <= MOE_MAX_EXPERTS:
        raise ValueError(f"moe_plan groups 1..{MOE_MAX_EXPERTS} experts, got {E}")
    if tile_rows not in MOE_TILE_ROWS:
        raise ValueError(f"tiles of {tile_rows} rows: the grouped kernels take {MOE_TILE_ROWS}")
    if n_tiles < max_tiles(n_pairs, E, tile_rows):
        raise ValueError(f"a tile table of {n_tiles} entries is short of {max_tiles(n_pairs, E, tile_rows)}")
    k._launch("moe.cu", "moe_plan", 1, threads,
              (experts, order, pos, tiles, i32(n_pairs), i32(E), i32(tile_rows), i32(n_tiles)))


def combine_rows(k, y, pos, weights, out, T: int, n_used: int, D: int) -> None:
    """out [T, D]: out[t] = sum_j weights[t, j] * y[pos[t * n_used + j]] (y: the experts' rows, sorted)."""
    if T:
        k._launch("moe.cu", "moe_combine_rows", T, 256, (y, pos, weights, out, i32(n_used), i32(D)))


def gate_up(k, fmt: str, x, order, n_used: int, tiles, n_tiles: int, tile_rows: int, gate, up, row_bytes: int,
            expert_bytes: int, bias_gate, bias_up, h, F: int, D: int, *, clamped: bool, limit: float | None,
            alpha: float | None, variant: str | None = None) -> None:
    """h [n_pairs, F] in sorted-row order: swiglu(x Wgate_e^T + bgate_e, x Wup_e^T + bup_e) for each pair's
    token x and expert e; gate and up: the stacked [E, F, D] weights' bytes (one format, one row size);
    tiles: moe_plan's table of tile_rows-row tiles; variant: the kernel (gemm_variant)."""
    cols, suffix = MOE_TILE_COLS, _suffix(gemm_variant(variant), fmt, tile_rows, gate_up=True)
    k._launch("moe_gemm.cu", f"moe_gate_up{suffix}_{fmt}", ((F + cols - 1) // cols, n_tiles), MOE_THREADS,
              (x, order, i32(n_used), tiles, i32(tile_rows), gate, up, i64(row_bytes), i64(expert_bytes),
               NULL if bias_gate is None else bias_gate, NULL if bias_up is None else bias_up, h, i32(F), i32(D),
               i32(1 if clamped else 0), i32(limit is not None), f32(limit or 0.0),
               f32(1.0 if alpha is None else alpha)))


def down(k, fmt: str, h, tiles, n_tiles: int, tile_rows: int, down_w, row_bytes: int, expert_bytes: int,
         bias_down, y, D: int, F: int, variant: str | None = None) -> None:
    """y [n_pairs, D] in sorted-row order: h Wdown_e^T + bdown_e for each sorted row's expert e."""
    variant = gemm_variant(variant)
    cols = MOE_TILE_COLS * (2 if kernel_variant(variant, fmt) in WIDE_DOWN_VARIANTS else 1)
    suffix = _suffix(variant, fmt, tile_rows)
    k._launch("moe_gemm.cu", f"moe_down{suffix}_{fmt}", ((D + cols - 1) // cols, n_tiles), MOE_THREADS,
              (h, tiles, i32(tile_rows), down_w, i64(row_bytes), i64(expert_bytes),
               NULL if bias_down is None else bias_down, y, i32(D), i32(F)))


def grouped_unsupported(gate, up, down, D: int, n_used: int) -> str | None:
    """Why the grouped prefill kernels cannot run these experts (None: they can). Expert weights are
    stacked CudaWeights [E, F, D] (gate, up: one format, one row size) and [E, D, F] (down)."""
    ws = (gate, up, down)
    if not all(getattr(w, "ndim", 0) == 3 and hasattr(w, "raw") for w in ws):
        return "expert weights are not stacked [E, N, K] device weights"
    formats = sorted({w.format for w in ws} - MOE_GEMM_FORMATS)
    if formats:
        return f"no grouped expert kernel for {', '.join(formats)} (grouped formats: {sorted(MOE_GEMM_FORMATS)})"
    E, F = gate.shape[0], gate.shape[1]
    if up.shape != gate.shape or down.shape != (E, D, F) or gate.shape[2] != D:
        return f"expert shapes gate {gate.shape}, up {up.shape}, down {down.shape} do not fit width {D}"
    if gate.format != up.format or gate.row_bytes != up.row_bytes:
        return "gate and up are stored differently"
    if D % MOE_K_STEP or F % MOE_K_STEP:
        return f"widths {D} and {F} are not multiples of {MOE_K_STEP}"
    if not 0 < n_used <= min(E, 32) or E > MOE_MAX_EXPERTS:
        return f"{n_used} of {E} experts a token (grouped: at most 32 of at most {MOE_MAX_EXPERTS})"
    return None
