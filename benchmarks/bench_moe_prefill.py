"""GPT-OSS prefill experts: the device path (T >= 2 tokens grouped by expert) against the host routing.

One GPT-OSS-20B-shaped expert layer of random weights (width D = F = 2880, E = 32 experts, k = 4 a token,
MXFP4 experts, F32 router and biases; stories/gpt/_moe_cases.py) and T = 128, 512, 2048 tokens:
  device_graph_ms  CudaBackend.mixture_of_experts (router product, moe_route, moe_plan, moe_gate_up,
                   moe_down, moe_combine_rows), median device time of one call from CUDA-graph replays;
  device_eager_ms  the same launched from Python, CUDA events around back-to-back calls (host work included
                   where the GPU waits for it);
  host_ms          Backend.mixture_of_experts, the host routing it replaces (router logits to the host,
                   then per active expert a gather, three products, SwiGLU and a scatter-add), wall time;
  stages_ms        each launch of the device path alone (CUDA events over back-to-back launches), and the
                   tensor-core rate of the grouped products (useful multiply-adds of the float product, the
                   split's extra TF32 terms not counted);
  gate_up_ms_by_tile_rows, down_ms_by_tile_rows  each grouped launch with each tile height (the choice:
                   moe.tile_rows_for);
  nmse_vs_host     the device path's output against the host routing's on the same backend.
Every device figure is given for each grouped kernel variant (moe.MOE_GEMM_VARIANTS, M0_CUDA_MOE_GEMM: v3 TF32,
v4 BF16, v5 int8 tensor cores; --variants picks some) under "variants"; the top-level figures are the default
variant's (when it is timed).
Per-layer times; a model's prefill runs 24 such layers. Writes JSON (--out). Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D = F = 2880
E, K_USED = 32, 4
LIMIT, ALPHA = 7.0, 1.702


def events_ms(cp, body, reps: int) -> float:
    """Mean milliseconds of one body() over reps back-to-back calls, CUDA events on the current stream."""
    body()
    cp.cuda.Device().synchronize()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        body()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / reps


def time_variant(b, cp, moe, weights, x, T: int, ref, reps: int, time_graph) -> dict:
    """The device path's figures with the grouped kernel variant moe.MOE_GEMM_VARIANT."""
    router, router_b, gate, gate_b, up, up_b, down, down_b = weights
    row = {}

    def device():
        return b.mixture_of_experts(x, *weights, K_USED, limit=LIMIT, alpha=ALPHA)

    out = device()
    assert b.moe_host_reason is None, b.moe_host_reason
    row["device_eager_ms"] = round(events_ms(cp, device, reps), 3)
    try:
        row["device_graph_ms"] = round(time_graph(cp, device, reps) / 1e3, 3)
    except Exception as exc:  # noqa: BLE001 - a capture failure is a result to report
        row["device_graph_ms"] = None
        row["graph_failure"] = f"{type(exc).__name__}: {exc}"[:300]
    o = b.to_host(out).astype(np.float64)
    row["nmse_vs_host"] = float(np.sum((o - ref) ** 2) / np.sum(ref * ref))

    # the device path's launches one by one, on buffers made once
    n_pairs = T * K_USED
    rows_a_tile = moe.tile_rows_for(n_pairs, E)
    n_tiles = moe.max_tiles(n_pairs, E, rows_a_tile)
    row["tile_rows"] = rows_a_tile
    logits = b.matmul(x, router, router_b)
    experts, wts = cp.empty((T, K_USED), np.int32), cp.empty((T, K_USED), np.float32)
    order, pos = cp.empty(n_pairs, np.int32), cp.empty(n_pairs, np.int32)
    tiles = cp.empty((n_tiles, 4), np.int32)
    h, y, o2 = cp.empty((n_pairs, F), np.float32), cp.empty((n_pairs, D), np.float32), cp.empty((T, D), np.float32)
    bg, bu, bd = (w.raw.view(np.float32) for w in (gate_b, up_b, down_b))
    moe.route(b, logits, experts, wts, T, E, K_USED)
    moe.plan(b, experts, order, pos, tiles, n_pairs, E, n_tiles, rows_a_tile)

    def gate_up(tiles_, n_, rows_):
        return lambda: moe.gate_up(b, gate.format, x, order, K_USED, tiles_, n_, rows_, gate.raw, up.raw,
                                   gate.row_bytes, F * gate.row_bytes, bg, bu, h, F, D, clamped=True, limit=LIMIT,
                                   alpha=ALPHA)

    def down_(tiles_, n_, rows_):
        return lambda: moe.down(b, down.format, h, tiles_, n_, rows_, down.raw, down.row_bytes, D * down.row_bytes,
                                bd, y, D, F)

    stages = {
        "router_product": lambda: b.matmul(x, router, router_b),
        "route": lambda: moe.route(b, logits, experts, wts, T, E, K_USED),
        "plan": lambda: moe.plan(b, experts, order, pos, tiles, n_pairs, E, n_tiles, rows_a_tile),
        "gate_up_swiglu": gate_up(tiles, n_tiles, rows_a_tile),
        "down": down_(tiles, n_tiles, rows_a_tile),
        "combine": lambda: moe.combine_rows(b, y, pos, wts, o2, T, K_USED, D),
    }
    row["stages_ms"] = {name: round(events_ms(cp, body, reps), 4) for name, body in stages.items()}
    row["gate_up_ms_by_tile_rows"], row["down_ms_by_tile_rows"] = {}, {}    # the tile-height choice checked
    for rows_opt in moe.MOE_TILE_ROWS:
        n_opt = moe.max_tiles(n_pairs, E, rows_opt)
        tiles_opt = cp.empty((n_opt, 4), np.int32)
        moe.plan(b, experts, order, pos, tiles_opt, n_pairs, E, n_opt, rows_opt)
        row["gate_up_ms_by_tile_rows"][rows_opt] = round(events_ms(cp, gate_up(tiles_opt, n_opt, rows_opt), reps), 4)
        row["down_ms_by_tile_rows"][rows_opt] = round(events_ms(cp, down_(tiles_opt, n_opt, rows_opt), reps), 4)
    macs = {"gate_up_swiglu": n_pairs * D * 2 * F, "down": n_pairs * F * D}
    row["tflops"] = {name: round(2 * m / (row["stages_ms"][name] * 1e-3) / 1e12, 1) for name, m in macs.items()}
    row["device_tokens_per_s"] = round(T / ((row["device_graph_ms"] or row["device_eager_ms"]) * 1e-3))
    return row


def main() -> None:
    import gguf

    from benchmarks.bench_matvec import time_graph
    from stories.gpt._moe_cases import moe_layer
    from worker.backend.base import Backend
    from worker.backend.cuda import CudaBackend
    from worker.backend.kernels import moe

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_moe_prefill.json"))
    ap.add_argument("--tokens", default="128,512,2048")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--variants", default=",".join(moe.MOE_GEMM_VARIANTS),
                    help="grouped kernel variants to time, comma-separated")
    args = ap.parse_args()
    variants = [moe.gemm_variant(v) for v in args.variants.split(",")]
    b = CudaBackend()
    cp = b.cp
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    weights = [b.load_weight(t) for t in moe_layer(gguf.GGMLQuantizationType.MXFP4, E, D, F, rng)]
    print(f"layer written and uploaded in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for T in (int(t) for t in args.tokens.split(",")):
        x = cp.asarray(rng.standard_normal((T, D)).astype(np.float32))
        row = {"T": T}
        host_times = []
        for _ in range(3):
            cp.cuda.Device().synchronize()
            t0 = time.perf_counter()
            ref = Backend.mixture_of_experts(b, x, *weights, K_USED, limit=LIMIT, alpha=ALPHA)
            cp.cuda.Device().synchronize()
            host_times.append((time.perf_counter() - t0) * 1e3)
        row["host_ms"] = round(statistics.median(host_times), 3)
        row["host_tokens_per_s"] = round(T / (row["host_ms"] * 1e-3))
        r = b.to_host(ref).astype(np.float64)
        row["variants"] = {}
        default_variant = moe.MOE_GEMM_VARIANT
        for variant in variants:
            moe.MOE_GEMM_VARIANT = variant
            try:
                row["variants"][variant] = time_variant(b, cp, moe, weights, x, T, r, args.reps, time_graph)
            finally:
                moe.MOE_GEMM_VARIANT = default_variant
            print(json.dumps({"T": T, "variant": variant, **row["variants"][variant]}), flush=True)
        row.update(row["variants"].get(moe.gemm_variant(), {}))
        rows.append(row)
    result = {"device": b.device_name, "layer": {"D": D, "F": F, "E": E, "k": K_USED, "experts": "MXFP4"},
              "metric": "milliseconds per expert layer (one of GPT-OSS-20B's 24)", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
