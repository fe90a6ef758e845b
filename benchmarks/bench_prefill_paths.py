"""A whole model's prefill under each choice of prefill path, in one process (GPU).

    python benchmarks/bench_prefill_paths.py MODEL.gguf --configs auto:v4,tf32x3:v4,auto:v5 --out reports/x.json

A configuration is Q8:MOE[:ROWS]: the Q8_0 prefill products' path (CudaBackend.prefill_q8, M0_CUDA_PREFILL_Q8:
auto, tf32x3, mma), the grouped expert kernels' variant (kernels/moe.py, M0_CUDA_MOE_GEMM: v3, v4, v5) and the
tile heights moe.tile_rows_for may choose (ROWS: 32 or 16/32/64; default the module's). The model is loaded once;
for each configuration and prompt length (--tokens) the prefill of one random prompt is timed (median of
--repeats after a warm-up; the second pass of a length captures its CUDA graph, later ones replay it) and its last
logits are compared with the first configuration's (NMSE, same argmax). The captured graphs are dropped between
configurations: a replay would run the kernels of the configuration it was captured under. Writes JSON (--out);
never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_configs(text: str) -> list[dict]:
    """'auto:v4,tf32x3:v4:16/32/64' -> [{"prefill_q8": "auto", "moe": "v4", "tile_rows": None}, ...]."""
    from worker.backend.kernels import mmq, moe

    configs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":")
        if len(fields) not in (2, 3):
            raise ValueError(f"configuration {part!r}: expected Q8:MOE or Q8:MOE:ROWS, e.g. auto:v4:32")
        q8, variant = fields[:2]
        mmq.uses_mma(q8, "q8_0", 1)                      # refuses an unknown path
        moe.gemm_variant(variant)                        # refuses an unknown variant
        rows = None
        if len(fields) == 3:
            rows = tuple(int(r) for r in fields[2].split("/"))
            if not rows or any(r not in moe.MOE_TILE_ROWS for r in rows):
                raise ValueError(f"configuration {part!r}: tile heights are among {moe.MOE_TILE_ROWS}")
        configs.append({"prefill_q8": q8, "moe": variant, "tile_rows": rows})
    if not configs:
        raise ValueError("no configuration given")
    return configs


def _drop_graphs(backend) -> None:
    backend.graphs.release_all()
    backend.graphs.free_released_pools()
    backend.graphs._shapes.clear()      # a shape's capture attempts too: the next configuration captures anew


def bench(path: Path, configs: list[dict], lengths: list[int], repeats: int) -> dict:
    from worker.backend.cuda import CudaBackend
    from worker.backend.kernels import moe
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    backend = CudaBackend()
    model = load_model(GGUFModelFile.open(path), backend)
    rng = np.random.default_rng(0)
    prompts = {n: rng.integers(3, model.config.vocab_size, size=n) for n in lengths}
    default_rows = moe.MOE_TILE_ROWS_CHOSEN
    rows, first = [], {}
    for config in configs:
        _drop_graphs(backend)
        backend.prefill_q8, moe.MOE_GEMM_VARIANT = config["prefill_q8"], config["moe"]
        moe.MOE_TILE_ROWS_CHOSEN = config["tile_rows"] or default_rows
        row = {**config, "tile_rows": list(moe.MOE_TILE_ROWS_CHOSEN), "lengths": {}}
        for n, ids in prompts.items():
            cache = model.new_cache(n)
            try:
                logits = backend.to_host(model.forward(ids, cache, 0)[-1]).astype(np.float64)   # compiles
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    backend.to_host(model.forward(ids, cache, 0)[-1])
                    times.append(time.perf_counter() - start)
            finally:
                backend.free_kv_cache(cache)
            reference = first.setdefault(n, logits)
            ms = 1e3 * float(np.median(times))
            row["lengths"][f"pp{n}"] = {
                "ms": round(ms, 3), "tok_s": round(n / ms * 1e3, 1),
                "logits_nmse_vs_first": float(np.sum((logits - reference) ** 2) / np.sum(reference ** 2)),
                "argmax_as_first": bool(np.argmax(logits) == np.argmax(reference))}
        print(json.dumps(row), flush=True)
        rows.append(row)
    moe.MOE_TILE_ROWS_CHOSEN = default_rows
    return {"device": backend.device_name, "model": path.name, "repeats": repeats,
            "metric": "milliseconds of one prefill (median; wall time to the last logits on the host)", "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--configs", default="auto:v4,tf32x3:v4,mma:v4,auto:v5")
    ap.add_argument("--tokens", default="128,512,2048")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_prefill_paths.json")
    args = ap.parse_args(argv)
    try:
        configs = parse_configs(args.configs)
        lengths = [int(t) for t in args.tokens.split(",")]
    except ValueError as exc:
        ap.error(str(exc))
    report = bench(args.model, configs, lengths, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
