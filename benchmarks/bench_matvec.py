"""Decode product speed per weight format: the float matvec against the int8-activation paths.

For each (format, N, K) of the benchmark models (SmolLM2 Q4_1, the Qwen2.5 Q4_K_M layout,
GPT-OSS-20B's MXFP4 experts and Q8_0 projections) this times y = x . W^T at T = 1 through
  float  matmul.cu's matvec_<fmt> (float dequantization of every value),
  q8     vecdot.cu: quantize_q8 (one int8 term, llama.cpp's Q8_1) + mmvq_<fmt>,
  q8x2   the same with two int8 terms (the backend's default),
as the median of CUDA-graph replays (so Python launch costs stay out) over enough distinct copies
of the weight to exceed the L2 cache, as a decode step reads them. Reported: microseconds per
product and the weight bytes read per second. Writes JSON (--out). Never asserts a time.
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


def main() -> None:
    import gguf

    from worker.backend.cuda import CudaBackend
    from worker.backend.cuda_runtime import NULL
    from worker.backend.kernels import matmul, vecdot

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_matvec.json"))
    args = ap.parse_args()
    b = CudaBackend()
    cp = b.cp
    rng = np.random.default_rng(0)
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
