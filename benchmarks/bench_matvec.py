"""Decode product speed per weight format: the float matvec against the int8-activation paths.

For each (format, N, K) of the benchmark models (SmolLM2 Q4_1, the Qwen2.5 Q4_K_M layout,
GPT-OSS-20B's MXFP4 experts and Q8_0 projections) this times y = x . W^T at T = 1 through
  float  matmul.cu's matvec_<fmt> (float dequantization of every value),
  q8     vecdot.cu: quantize_q8 (one int8 term, llama.cpp's Q8_1) + mmvq_<fmt>,
  q8x2   the same with two int8 terms (the backend's default),
as the median of CUDA-graph replays (so Python launch costs stay out) over enough distinct copies
of the weight to exceed the L2 cache, as a decode step reads them. Reported: microseconds per
product and the weight bytes read per second. Writes JSON (--out). Never asserts a time.

--variants instead times the geometry choices of vecdot.py on the Qwen2.5 and GPT-OSS decode shapes and
prints one table: mmvq at each split rule (MMVQ_ONE_WARP_BLOCKS: 0 the earlier split past 64 blocks of 32,
128, or one warp always), and mmvq_swiglu with one or two 512-thread blocks an SM (MMVQ_SWIGLU_X2) at each
split rule (reports/bench_matvec_variants.json).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [  # (GGML type, N, K, where it occurs)
    ("Q4_1", 576, 576, "SmolLM2 attn_q/o"),
    ("Q4_1", 1536, 576, "SmolLM2 ffn_gate/up"),
    ("Q4_1", 576, 1536, "SmolLM2 ffn_down"),
    ("Q8_0", 49152, 576, "SmolLM2 output"),
    ("Q5_0", 896, 896, "Qwen2.5-0.5B attn_q/o"),
    ("Q5_0", 4864, 896, "Qwen2.5-0.5B ffn_gate/up"),
    ("Q4_K", 896, 4864, "Qwen2.5-0.5B ffn_down"),
    ("Q6_K", 896, 4864, "Qwen2.5-0.5B ffn_down (Q6_K layers)"),
    ("Q8_0", 151936, 896, "Qwen2.5-0.5B output"),
    ("MXFP4", 2880, 2880, "GPT-OSS-20B expert gate/up/down"),
    ("Q8_0", 4096, 2880, "GPT-OSS-20B attn_q"),
    ("Q4_K", 16384, 8192, "large (bandwidth)"),
]
L2_BYTES = 60 << 20


def _random_weight(qtype, N, K, rng):
    from stories.foundation._cuda_conformance import random_weight
    return random_weight(qtype, (N, K), rng)


def time_graph(cp, body, reps: int) -> float:
    """Median microseconds of one `body()` call, from graph replays of `reps` calls."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        body()                                       # compile, warm, size the workspace and tables
        stream.synchronize()
        cp.cuda.Device().synchronize()               # the capture stream does not wait for the null stream
        stream.begin_capture()
        for _ in range(reps):
            body()
        graph = stream.end_capture()
        graph.launch()
        stream.synchronize()
        times = []
        for _ in range(7):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            graph.launch()
            stop.record(stream)
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) * 1e3 / reps)
    return statistics.median(times)


VARIANT_PRODUCTS = [  # (GGML type, N, K, expert slots, where)
    ("Q4_K", 896, 4864, 1, "Qwen2.5 ffn_down"),
    ("Q6_K", 896, 4864, 1, "Qwen2.5 ffn_down (Q6_K layers)"),
    ("Q5_0", 896, 896, 1, "Qwen2.5 attn_output"),
    ("MXFP4", 2880, 2880, 4, "GPT-OSS expert down, 4 slots"),
    ("Q8_0", 4096, 2880, 1, "GPT-OSS attn_q"),
    ("Q8_0", 2880, 4096, 1, "GPT-OSS attn_output"),
]
VARIANT_SWIGLU = [  # (GGML type, F, K, expert slots, where)
    ("Q5_0", 4864, 896, 1, "Qwen2.5 ffn gate/up"),
    ("MXFP4", 2880, 2880, 4, "GPT-OSS experts gate/up, 4 slots"),
]
ONE_WARP_RULES = {"split>64": 0, "1warp<=128": 128, "1warp": 100000}   # vecdot.MMVQ_ONE_WARP_BLOCKS


def _stacked(b, qtype, N: int, K: int, slots: int, rng):
    """A [E, N, K] weight of enough experts that the calls' sets exceed twice the L2 cache, and
    pick(i) -> (raw, expert ids or None) of the i-th set: slots == 1 takes expert i as a plain weight."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    sets = max(2, min(64, -(-2 * L2_BYTES // (slots * N * K // block * type_size))))
    w = b.load_weight(_random_weight(qtype, sets * slots * N, K, rng))
    expert_bytes = N * w.row_bytes
    ids = [b.cp.arange(i * slots, (i + 1) * slots, dtype=np.int32) for i in range(sets)]

    def pick(i):
        i %= sets
        return (w.raw[i * expert_bytes:], None) if slots == 1 else (w.raw, ids[i])

    return w, expert_bytes, sets, pick


def bench_variants(b, rng) -> dict:
    import gguf

    from worker.backend.kernels import vecdot

    saved = (vecdot.MMVQ_ONE_WARP_BLOCKS, vecdot.MMVQ_SWIGLU_X2)
    cp, out = b.cp, {"mmvq": [], "mmvq_swiglu": []}
    try:
        print(f"mmvq us by split rule ({', '.join(f'{k}: ONE_WARP_BLOCKS={v}' for k, v in ONE_WARP_RULES.items())})")
        for name, N, K, slots, where in VARIANT_PRODUCTS:
            qtype = gguf.GGMLQuantizationType[name]
            w, expert_bytes, sets, pick = _stacked(b, qtype, N, K, slots, rng)
            xq, xds = vecdot.activation_buffers(b, slots, K)
            vecdot.quantize(b, cp.asarray(rng.standard_normal((slots, K)).astype(np.float32)), xq, xds, slots, K)
            y = cp.empty((slots, N), np.float32)
            state = {"i": 0}

            def body():
                state["i"] += 1
                raw, ids = pick(state["i"])
                vecdot.mmvq(b, w.format, raw, w.row_bytes, xq, xds, y, N, K, 1, 2, slots=slots, expert_ids=ids,
                            expert_bytes=expert_bytes, x_per_slot=slots > 1)

            row = {"format": name, "N": N, "K": K, "slots": slots, "where": where}
            for rule, blocks in ONE_WARP_RULES.items():
                vecdot.MMVQ_ONE_WARP_BLOCKS = blocks
                row[rule] = round(time_graph(cp, body, 4 * sets), 2)
                row[f"{rule}_parts"] = vecdot.mmvq_parts(K)
            out["mmvq"].append(row)
            print(f"  {name:6s} N={N:5d} K={K:5d} x{slots}  " + "  ".join(
                f"{rule} {row[rule]:7.2f} ({row[f'{rule}_parts']}w)" for rule in ONE_WARP_RULES) + f"   {where}",
                flush=True)
        print("mmvq_swiglu us: blocks an SM (x1: mmvq_swiglu_<fmt>, x2: mmvq_swiglu_x2_<fmt>) by split rule")
        for name, F, K, slots, where in VARIANT_SWIGLU:
            qtype = gguf.GGMLQuantizationType[name]
            fmt = name.lower()
            g, expert_bytes, sets, pick_g = _stacked(b, qtype, F, K, slots, rng)
            _, _, _, pick_u = _stacked(b, qtype, F, K, slots, rng)
            xq, xds = vecdot.activation_buffers(b, 1, K)
            vecdot.quantize(b, cp.asarray(rng.standard_normal((1, K)).astype(np.float32)), xq, xds, 1, K)
            yq, yds = vecdot.output_buffers_besides(b, xq, slots, F)
            y = cp.empty((slots, F), np.float32)
            state = {"i": 0}

            def body():
                state["i"] += 1
                (graw, ids), (uraw, _) = pick_g(state["i"]), pick_u(state["i"])
                vecdot.mmvq_swiglu(b, fmt, graw, uraw, g.row_bytes, xq, xds, y, yq, yds, F, K, 1, 2, slots=slots,
                                   expert_ids=ids, expert_bytes=expert_bytes)

            row = {"format": name, "F": F, "K": K, "slots": slots, "where": where}
            for rule, blocks in ONE_WARP_RULES.items():
                for x2 in (False, True):
                    vecdot.MMVQ_ONE_WARP_BLOCKS = blocks
                    vecdot.MMVQ_SWIGLU_X2 = frozenset({fmt} if x2 else ())
                    row[f"{rule}_x{2 if x2 else 1}"] = round(time_graph(cp, body, 4 * sets), 2)
            out["mmvq_swiglu"].append(row)
            print(f"  {name:6s} F={F:5d} K={K:5d} x{slots}  " + "  ".join(
                f"{rule} x1 {row[f'{rule}_x1']:7.2f} x2 {row[f'{rule}_x2']:7.2f}" for rule in ONE_WARP_RULES)
                + f"   {where}", flush=True)
    finally:
        vecdot.MMVQ_ONE_WARP_BLOCKS, vecdot.MMVQ_SWIGLU_X2 = saved
    return out


def main() -> None:
    import gguf

    from worker.backend.cuda import CudaBackend
    from worker.backend.cuda_runtime import NULL
    from worker.backend.kernels import matmul, vecdot

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", action="store_true", help="only the geometry choices' table (vecdot.py)")
    args = ap.parse_args()
    b = CudaBackend()
    cp = b.cp
    rng = np.random.default_rng(0)
    if args.variants:
        out = Path(args.out or ROOT / "reports" / "bench_matvec_variants.json")
        result = {"device": b.device_name, "metric": "median us per T=1 launch over CUDA-graph replays",
                  **bench_variants(b, rng)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")
        return
    args.out = args.out or str(ROOT / "reports" / "bench_matvec.json")
    rows = []
    for name, N, K, where in SHAPES:
        qtype = gguf.GGMLQuantizationType[name]
        w = b.load_weight(_random_weight(qtype, N, K, rng))
        extra = min(15, L2_BYTES * 2 // w.nbytes)
        copies = [w] + [b.load_weight(_random_weight(qtype, N, K, rng)) for _ in range(extra)]
        x = cp.asarray(rng.standard_normal((1, K)).astype(np.float32))
        y = cp.empty((1, N), np.float32)
        xq, xds = vecdot.activation_buffers(b, 1, K)
        row = {"format": name, "N": N, "K": K, "where": where, "weight_bytes": w.nbytes, "copies": len(copies)}
        state = {"i": 0}

        def next_weight():
            state["i"] = (state["i"] + 1) % len(copies)
            return copies[state["i"]]

        def float_path():
            ww = next_weight()
            matmul.matvec(b, ww, ww.raw, x, NULL, y, N, K, 1)

        def int8_path(terms):
            def body():
                ww = next_weight()
                vecdot.quantize(b, x, xq, xds, 1, K, terms)
                vecdot.mmvq(b, ww.format, ww.raw, ww.row_bytes, xq, xds, y, N, K, 1, terms)
            return body

        reps = 4 * len(copies)
        for path, body in (("float", float_path), ("q8", int8_path(1)), ("q8x2", int8_path(2))):
            us = time_graph(cp, body, reps)
            row[f"{path}_us"] = round(us, 2)
            row[f"{path}_GBps"] = round(w.nbytes / us / 1e3, 1)
        rows.append(row)
        print(f"{name:6s} N={N:6d} K={K:5d} {w.nbytes / 1e6:8.2f} MB  float {row['float_us']:8.2f} us "
              f"{row['float_GBps']:7.1f} GB/s | q8 {row['q8_us']:8.2f} us {row['q8_GBps']:7.1f} GB/s | "
              f"q8x2 {row['q8x2_us']:8.2f} us {row['q8x2_GBps']:7.1f} GB/s   ({where})", flush=True)
    result = {"device": b.device_name, "metric": "median us per T=1 product over CUDA-graph replays; GB/s of weights",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
