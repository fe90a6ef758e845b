"""Where a decode step and a prefill spend their time on the GPU (run under Nsight Compute).

    ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --log-file K.csv \
        python benchmarks/profile_gpu.py run MODEL.gguf --what decode|prefill128|prefill512
    python benchmarks/profile_gpu.py summarize K.csv          # per-kernel totals, largest first

`run` warms up (kernel compilation, graph capture), times the step without the profiler (wall
clock, the figure a user sees), then runs it once more between cudaProfilerStart/Stop so that
ncu measures each of its kernels. The sum of the kernel times against the wall time says how much
is launch gaps and host work. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(path: str, what: str, repeats: int) -> dict:
    import cupy as cp

    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    backend = CudaBackend()
    model = load_model(GGUFModelFile.open(path), backend)
    V = model.config.vocab_size
    rng = np.random.default_rng(0)
    if what == "decode":
        n_ctx = 256
        cache = model.new_cache(n_ctx)
        pos = iter(range(n_ctx))

        def step():
            backend.to_host(model.forward(np.array([int(rng.integers(3, V))]), cache, next(pos))[-1])
        for _ in range(3):
            step()
    else:
        T = int(what.removeprefix("prefill"))
        cache = model.new_cache(T)

        def step():
            backend.to_host(model.forward(rng.integers(3, V, size=T), cache, 0)[-1])
        step()
    backend.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    cp.cuda.profiler.start()
    step()
    backend.synchronize()
    cp.cuda.profiler.stop()
    return {"model": Path(path).name, "what": what, "wall_ms_median": 1e3 * float(np.median(times)),
            "graphs": {k: v for k, v in backend.graphs.stats.items() if k != "failures"},
            "graph_failures": backend.graphs.stats["failures"][:2]}


def summarize(csv_path: str, top: int) -> dict:
    per = defaultdict(lambda: [0, 0.0])
    total = 0.0
    with open(csv_path, newline="") as f:
        lines = [ln for ln in f if ln.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        us = value * {"nsecond": 1e-3, "ns": 1e-3, "msecond": 1e3, "ms": 1e3}.get(row.get("Metric Unit"), 1.0)
        name = row["Kernel Name"].split("(")[0][:60]
        per[name][0] += 1
        per[name][1] += us
        total += us
    rows = sorted(per.items(), key=lambda kv: -kv[1][1])
    out = {"kernels": sum(c for c, _ in per.values()), "kernel_us_total": round(total, 1),
           "by_kernel": [(n, c, round(us, 1), round(us / c, 2)) for n, (c, us) in rows[:top]]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("model")
    r.add_argument("--what", default="decode")
    r.add_argument("--repeats", type=int, default=20)
    s = sub.add_parser("summarize")
    s.add_argument("csv")
    s.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if args.cmd == "run":
        print(json.dumps(run(args.model, args.what, args.repeats)), flush=True)
    else:
        print(json.dumps(summarize(args.csv, args.top), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
