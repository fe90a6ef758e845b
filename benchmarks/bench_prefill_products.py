"""Prefill product speed: TF32 tensor cores in three split terms ("tf32x3") against float32 sgemm ("fp32").

For each (format, N, K) of the benchmark models and T tokens this times y = x W^T through
worker/backend/kernels/matmul.py's prefill_product on both paths:
  graph_us   median device time of one product, from CUDA-graph replays (no Python in the loop);
  eager_us   wall time of one product launched from Python (host work included), averaged over
             back-to-back calls with one synchronize at the end;
  dequant_us the weight's dequantization alone (dequant_rows / dequant_split_rows), from replays;
and the product's term-normalized error against float64 (the conformance rows' measure). Back-to-back
products of one input split it once, as the q, k, v products of a layer do. Writes JSON (--out).
Never asserts a time.
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

SHAPES = [  # (GGML type, N, K, where it occurs)
    ("Q4_1", 1536, 576, "SmolLM2 ffn_gate/up"),
    ("Q5_0", 896, 896, "Qwen2.5-0.5B attn_q/o"),
    ("Q5_0", 4864, 896, "Qwen2.5-0.5B ffn_gate/up"),
    ("Q4_K", 896, 4864, "Qwen2.5-0.5B ffn_down"),
    ("Q6_K", 896, 4864, "Qwen2.5-0.5B ffn_down (Q6_K layers)"),
    ("MXFP4", 2880, 2880, "GPT-OSS-20B expert"),
    ("F16", 896, 896, "a float16 projection"),
]


def replay_us(cp, body, reps: int = 20) -> float:
    """Median microseconds of one body() from replays of a graph of `reps` calls."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        body()
        stream.synchronize()
        stream.begin_capture()
        for _ in range(reps):
            body()
        graph = stream.end_capture()
        times = []
        for _ in range(5):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            graph.launch(stream)
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) * 1000 / reps)
    return statistics.median(times)


def bench(backend, qtype_name: str, N: int, K: int, T: int, where: str) -> dict:
    import gguf

    from stories.foundation._cuda_conformance import random_weight
    from worker.backend.cuda_runtime import NULL
    from worker.backend.kernels import matmul
    from worker.backend.numpy import NumpyBackend

    cp = backend.cp
    rng = np.random.default_rng(N + K + T)
    w = random_weight(gguf.GGMLQuantizationType[qtype_name], (N, K), rng)
    weight = backend.load_weight(w)
    x_host = rng.standard_normal((T, K)).astype(np.float32)
    x, y = cp.asarray(x_host), cp.empty((T, N), np.float32)
    dense = NumpyBackend().load_weight(w).dense().astype(np.float64)
    exact = x_host.astype(np.float64) @ dense.T
    scale = np.abs(x_host.astype(np.float64)) @ np.abs(dense).T
    state = matmul.prefill_products(backend)
    row = {"format": qtype_name, "N": N, "K": K, "T": T, "where": where}
    tile = matmul.workspace_ptr(backend, matmul.TILE, 2 * N * K)
    for path in ("fp32", "tf32x3"):
        state.path = path

        def product():
            matmul.prefill_product(backend, weight, weight.raw, x, y, tile_bytes=64 << 20)

        split = path == "tf32x3" and weight.format not in matmul.TF32_EXACT_FORMATS

        def dequant():
            if split:
                matmul.dequant_split_rows(backend, weight, weight.raw, 0, np.uint64(tile), N, K)
            else:
                matmul.dequant_rows(backend, weight, weight.raw, NULL, 0, np.uint64(tile), N, K)

        product()
        cp.cuda.Device().synchronize()
        err = float(np.sum((cp.asnumpy(y).astype(np.float64) - exact) ** 2) / np.sum(scale * scale))
        reps = 30
        t0 = time.perf_counter()
        for _ in range(reps):
            product()
        cp.cuda.Device().synchronize()
        row[path] = {"graph_us": round(replay_us(cp, product), 1),
                     "eager_us": round((time.perf_counter() - t0) * 1e6 / reps, 1),
                     "dequant_us": round(replay_us(cp, dequant), 1), "term_nmse": err}
    state.path = "tf32x3"
    row["speedup_graph"] = round(row["fp32"]["graph_us"] / row["tf32x3"]["graph_us"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_prefill_products.json"))
    args = parser.parse_args()
    from worker.backend.cuda import CudaBackend

    backend = CudaBackend()
    rows = []
    for qtype_name, N, K, where in SHAPES:
        for T in args.tokens:
            rows.append(bench(backend, qtype_name, N, K, T, where))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": backend.device_name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
