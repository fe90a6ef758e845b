"""Q8_0 prefill products: int8 tensor cores (kernels/mmq.py, M0_CUDA_PREFILL_Q8=mma) beside the default TF32 path,
and the BF16 tensor cores (mmq.product_bf16, M0_CUDA_PREFILL_Q8=bf16).

GPT-OSS-20B's attention products (Q8_0 weights): q (N = 4096, K = 2880), k and v (N = 512, K = 2880), o
(N = 2880, K = 4096), at T = 128, 512, 2048 tokens. For each product:
  tf32x3.product_us  matmul.prefill_product (dequant_split_rows tiles + two cuBLAS TF32 products), the input split
                     already made (as for the k and v products of one input);
  tf32x3.split_us    matmul.split_input, the input's [hi | hi | lo] split, once an input;
  mma.product_us     mmq.product on the int8 activations, k split as mmq.k_splits chooses (mma.splits);
  mma.unsplit_us     the same with one block a tile (splits = 1), where the choice splits;
  bf16.product_us    mmq.product_bf16 on the float32 input (split into bfloat16 terms in the kernel), k split alike;
  mma.quantize_us    vecdot.quantize (two int8 terms), once an input;
  *.term_nmse        the error against float64 x @ W^T, normalized by the size of the terms (the conformance
                     rows' measure); mma.tops the int8 rate (2 T N K operations a term);
and per T a layer's four products as a prefill runs them (one split or quantization for q, k, v, one for o):
layer_us for each path. Times are medians of CUDA-graph replays (bench_prefill_products.replay_us). Writes JSON
(--out). Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRODUCTS = [("attn_q", 4096, 2880), ("attn_k", 512, 2880), ("attn_v", 512, 2880), ("attn_output", 2880, 4096)]


def bench_products(b, T: int, rng) -> dict:
    import gguf

    from benchmarks.bench_prefill_products import replay_us
    from stories.foundation._cuda_conformance import random_weight
    from worker.backend.kernels import matmul, mmq, vecdot
    from worker.backend.numpy import NumpyBackend

    cp = b.cp
    state = matmul.prefill_products(b)
    state.path = "tf32x3"
    inputs, weights, rows = {}, {}, {}
    for name, N, K in PRODUCTS:
        w = random_weight(gguf.GGMLQuantizationType.Q8_0, (N, K), rng, name=name)
        weights[name] = (w, b.load_weight(w))
        if K not in inputs:
            inputs[K] = rng.standard_normal((T, K)).astype(np.float32)
    dev_x = {K: cp.asarray(x) for K, x in inputs.items()}
    quantized = {}
    for K, x in dev_x.items():                         # one quantized input a width, kept in their own arrays
        xq, xds = cp.empty(2 * T * K, np.int8), cp.empty(T * (K // 32) * 4, np.float32)
        vecdot.quantize(b, x, xq, xds, T, K, 2)
        quantized[K] = (xq, xds)
    for name, N, K in PRODUCTS:
        w, dw = weights[name]
        x, (xq, xds) = dev_x[K], quantized[K]
        y = cp.empty((T, N), np.float32)
        dense = NumpyBackend().load_weight(w).dense().astype(np.float64)
        exact = inputs[K].astype(np.float64) @ dense.T
        scale = np.abs(inputs[K].astype(np.float64)) @ np.abs(dense).T

        def term_nmse():
            cp.cuda.Device().synchronize()
            return float(np.sum((cp.asnumpy(y).astype(np.float64) - exact) ** 2) / np.sum(scale * scale))

        def tf32_product():
            matmul.prefill_product(b, dw, dw.raw, x, y, tile_bytes=64 << 20)

        def mma_product(splits=None):
            mmq.product(b, dw.raw, dw.row_bytes, xq, xds, y, T, N, K, 2, splits=splits)

        tf32_product()
        row = {"N": N, "K": K,
               "tf32x3": {"term_nmse": term_nmse(), "product_us": round(replay_us(cp, tf32_product), 1)}}
        xs = np.uint64(matmul.workspace_ptr(b, matmul.SPLIT_INPUT, 3 * T * K))
        row["tf32x3"]["split_us"] = round(replay_us(cp, lambda: matmul.split_input(b, x, xs, T, K)), 1)
        mma_product()
        us = replay_us(cp, mma_product)
        row["mma"] = {"term_nmse": term_nmse(), "product_us": round(us, 1), "splits": mmq.k_splits(T, N, K),
                      "tops": round(2 * 2 * T * N * K / (us * 1e-6) / 1e12, 1),
                      "quantize_us": round(replay_us(cp, lambda: vecdot.quantize(b, x, xq, xds, T, K, 2)), 1)}
        if row["mma"]["splits"] > 1:
            row["mma"]["unsplit_us"] = round(replay_us(cp, lambda: mma_product(1)), 1)

        def bf16_product():
            mmq.product_bf16(b, dw.raw, dw.row_bytes, x, y, T, N, K)

        bf16_product()
        row["bf16"] = {"term_nmse": term_nmse(), "product_us": round(replay_us(cp, bf16_product), 1)}
        rows[name] = row
    layer = {}
    for path in ("tf32x3", "mma", "bf16"):             # q, k, v on one input, o on another: as a layer runs them
        prepare = {"tf32x3": "split_us", "mma": "quantize_us"}.get(path)     # bf16 splits inside its kernel
        layer[path] = round(sum(rows[n][path]["product_us"] for n, _, _ in PRODUCTS)
                            + (sum(rows[n][path][prepare] for n in ("attn_q", "attn_output")) if prepare else 0.0), 1)
    return {"T": T, "products": rows, "layer_us": layer,
            "layer_speedup": round(layer["tf32x3"] / layer["mma"], 2) if layer["mma"] else None,
            "bf16_over_mma": round(layer["mma"] / layer["bf16"], 2) if layer["bf16"] else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench_int8_prefill.json"))
    args = parser.parse_args()
    from worker.backend.cuda import CudaBackend

    b = CudaBackend()
    rng = np.random.default_rng(0)
    rows = []
    for T in args.tokens:
        rows.append(bench_products(b, T, rng))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": b.device_name, "weights": "Q8_0 (GPT-OSS-20B attention)",
                                          "metric": "microseconds per product (CUDA-graph replays)",
                                          "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
