"""Attention kernel speed: one decode step's launch and one prefill chunk's, per model shape and context.

Decode (attention_decode_<kvt>, T = 1, fused RoPE and int8 side output as CudaBackend.attention calls
it): SmolLM2-135M (9 query heads / 3 KV heads), Qwen2.5-0.5B (14 / 2) and GPT-OSS-20B (64 / 8, full
and 128-position sliding layers with sinks), head_dim 64, float16 caches, at contexts from 25 to
32000 positions in caches of several sizes (the split count follows the cache size, the work the
position). Prefill (attention_prefill_*): Qwen2.5 heads at 128..2048 tokens, both tile shapes of
64-wide heads (the figures for kernels/attention.py's SHORT_PREFILL), with and without rope=.

Times are medians of CUDA-graph replays (Python launch costs stay out), cycling over enough layers'
caches to exceed the L2 cache where one layer's fits in it, as a decode step reads them. Writes JSON
(--out). Never asserts a time.

--rows-variants times the decode kernel at every row count a block may take (kernels/attention.py's
DECODE_ROWS_CHOICE, M0_CUDA_ATT_DECODE_ROWS: "group" the earlier whole-group blocks, "auto", 1, 2, 4, 8) on
Qwen2.5's and GPT-OSS's heads at contexts 32, 128, 1024 and 4096 and prints one table.

Run on the GPU machine: .venv/bin/python benchmarks/bench_attention.py [--out reports/bench_attention.json]
[--rows-variants]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_matvec import time_graph  # noqa: E402 — after the path insert

MODELS = {  # name: (H, KVH, hd, sliding window, sinks)
    "SmolLM2-135M": (9, 3, 64, 0, False),
    "Qwen2.5-0.5B": (14, 2, 64, 0, False),
    "GPT-OSS-20B full": (64, 8, 64, 0, True),
    "GPT-OSS-20B sliding": (64, 8, 64, 128, True),
}
DECODE_POINTS = [  # (position, cache positions)
    (25, 256), (25, 4096), (128, 4096), (500, 512), (1000, 1024), (1000, 8192), (4000, 4096),
    (8000, 8192), (16000, 16384), (32000, 32768),
]
PREFILL_TOKENS = [128, 512, 1024, 2048]
L2_BYTES = 60 << 20
DEFAULT_OUT = str(ROOT / "reports" / "bench_attention.json")


def _layers(n_ctx: int, KVH: int, hd: int) -> int:
    """Caches to cycle over so that their K and V exceed twice the L2 cache (at most 24)."""
    per_layer = 2 * n_ctx * KVH * hd * 2
    return max(1, min(24, -(-2 * L2_BYTES // per_layer)))


ROWS_VARIANT_MODELS = ("Qwen2.5-0.5B", "GPT-OSS-20B full", "GPT-OSS-20B sliding")
ROWS_VARIANT_POINTS = [(32, 256), (128, 256), (1024, 1280), (4096, 4352)]   # (position, cache positions)
ROWS_CHOICES = ("group", "auto", "1", "2", "4", "8")


def _decode_inputs(b, rng, model: str):
    """(q, k, v, sinks weight or None) of one decode token for a model's heads."""
    H, KVH, hd, _, sinks = MODELS[model]
    sink_w = None
    if sinks:
        from stories.foundation._cuda_conformance import f32_tensor
        sink_w = b.load_weight(f32_tensor(rng.standard_normal(H), "sinks"))
    q, k, v = (b.asarray(rng.standard_normal((1, n, hd)).astype(np.float32)) for n in (H, KVH, KVH))
    return q, k, v, sink_w


def _decode_timer(b, model: str, inputs, pos: int, n_ctx: int):
    """(time(): median us of one decode launch at `pos` over caches of n_ctx positions, the caches, layers)."""
    from worker.config import RopeConfig

    rope = RopeConfig(dim=64, base=10000.0, style="neox")
    _, KVH, hd, window, _ = MODELS[model]
    q, k, v, sink_w = inputs
    layers = _layers(n_ctx, KVH, hd)
    cache = b.new_kv_cache(layers, n_ctx, KVH, hd)
    for layer in range(layers):               # finite values everywhere the kernel may read
        for c in (cache.k[layer], cache.v[layer]):
            c[:pos] = b.cp.random.standard_normal((pos, KVH, hd), dtype=np.float32).astype(c.dtype)
    state = {"layer": 0}

    def step():
        state["layer"] = (state["layer"] + 1) % layers
        b.attention(q, k, v, cache, state["layer"], pos, sliding_window=window, sinks=sink_w, rope=rope)

    return (lambda: time_graph(b.cp, step, reps=4 * layers if layers > 1 else 100)), cache, layers


def bench_decode(b, rng) -> list[dict]:
    rows = []
    for model in MODELS:
        inputs = _decode_inputs(b, rng, model)
        for pos, n_ctx in DECODE_POINTS:
            timer, cache, layers = _decode_timer(b, model, inputs, pos, n_ctx)
            us = timer()
            b.free_kv_cache(cache)
            row = {"model": model, "position": pos, "n_ctx": n_ctx, "layers": layers, "us": round(us, 2)}
            rows.append(row)
            print(f"decode  {model:20s} pos {pos:6d} cache {n_ctx:6d}: {us:8.2f} us", flush=True)
    return rows


def bench_decode_rows_variants(b, rng) -> list[dict]:
    """The decode launch at each row count a block may take (DECODE_ROWS_CHOICE), one table."""
    from worker.backend.kernels import attention as kernels

    chosen, rows = kernels.DECODE_ROWS_CHOICE, []
    print(f"decode us ({', '.join(ROWS_CHOICES)}: rows a block; 'group' the earlier whole groups)")
    print(f"{'model':20s} {'pos':>5s} {'cache':>6s} " + " ".join(f"{c:>7s}" for c in ROWS_CHOICES) + "   grid(auto)")
    try:
        for model in ROWS_VARIANT_MODELS:
            H, KVH, hd, _, _ = MODELS[model]
            inputs = _decode_inputs(b, rng, model)
            for pos, n_ctx in ROWS_VARIANT_POINTS:
                timer, cache, layers = _decode_timer(b, model, inputs, pos, n_ctx)
                row = {"model": model, "position": pos, "n_ctx": n_ctx, "layers": layers,
                       "grid_auto": kernels.decode_grid(n_ctx, 1, H, KVH, hd, "auto")}
                for choice in ROWS_CHOICES:
                    kernels.DECODE_ROWS_CHOICE = choice
                    row[choice] = round(timer(), 2)
                b.free_kv_cache(cache)
                rows.append(row)
                print(f"{model:20s} {pos:5d} {n_ctx:6d} " + " ".join(f"{row[c]:7.2f}" for c in ROWS_CHOICES)
                      + f"   {row['grid_auto']}", flush=True)
    finally:
        kernels.DECODE_ROWS_CHOICE = chosen
    return rows


def bench_prefill(b, rng) -> list[dict]:
    from worker.backend.kernels import attention as kernels
    from worker.config import RopeConfig

    rope = RopeConfig(dim=64, base=1000000.0, style="neox")
    H, KVH, hd = 14, 2, 64
    rows = []
    chosen = kernels.SHORT_PREFILL
    for T in PREFILL_TOKENS:
        cache = b.new_kv_cache(1, T, KVH, hd)
        q, k, v = (b.asarray(rng.standard_normal((T, n, hd)).astype(np.float32)) for n in (H, KVH, KVH))
        row = {"model": "Qwen2.5-0.5B", "tokens": T}
        try:
            for queries, short in ((32, 1 << 30), (64, 0)):
                kernels.SHORT_PREFILL = short
                row[f"q{queries}_us"] = round(time_graph(b.cp, lambda: b.attention(q, k, v, cache, 0, 0), 10), 1)
            kernels.SHORT_PREFILL = chosen
            row["us"] = round(time_graph(b.cp, lambda: b.attention(q, k, v, cache, 0, 0), 10), 1)
            row["rope_us"] = round(time_graph(b.cp, lambda: b.attention(q, k, v, cache, 0, 0, rope=rope), 10), 1)
        finally:
            kernels.SHORT_PREFILL = chosen
            b.free_kv_cache(cache)
        rows.append(row)
        print(f"prefill {row['model']:20s} T {T:5d}: {row['us']:8.1f} us (rope= {row['rope_us']:.1f} us; "
              f"32-query tiles {row['q32_us']:.1f}, 64-query tiles {row['q64_us']:.1f}; "
              f"SHORT_PREFILL {chosen})", flush=True)
    return rows


def main() -> None:
    from worker.backend.cuda import CudaBackend

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--decode-only", action="store_true")
    ap.add_argument("--rows-variants", action="store_true", help="only the decode table over rows a block")
    args = ap.parse_args()
    b = CudaBackend(kv_dtype="float16")
    rng = np.random.default_rng(0)
    if args.rows_variants:
        result = {"device": b.device_name, "metric": "median us per decode launch over CUDA-graph replays, "
                  "T = 1, fused RoPE, int8 output, by rows a block (M0_CUDA_ATT_DECODE_ROWS)",
                  "decode_rows_variants": bench_decode_rows_variants(b, rng)}
        out = Path(args.out if args.out != DEFAULT_OUT else ROOT / "reports" / "bench_attention_rows.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        return
    result = {"device": b.device_name,
              "metric": "median us per launch over CUDA-graph replays (decode: T = 1, fused RoPE, int8 output)",
              "decode": bench_decode(b, rng)}
    if not args.decode_only:
        result["prefill"] = bench_prefill(b, rng)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
