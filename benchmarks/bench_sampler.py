"""Host sampler speed per token: the step-by-step pipeline of worker/sampling.py (softmax over the
whole vocabulary for each filter, a full sort for top-p: how Sampler.sample drew before) against
Sampler.sample (worker/sampling_fast.py), for vocabularies of 49,152 (SmolLM2) and 151,936 (Qwen2.5)
tokens, on the same logits in the same run, each setting timed alternately.

Logits: seeded normal(0, 3) float32 rows (a fresh row per token), history: 64 earlier ids. For each
setting the two must draw the same ids from the same seed (checked here over every timed token and
reported as `same_ids`). Reported per setting: milliseconds per token before and after (median over
the tokens, and the fastest token: on a shared machine the median carries the others' load), and
ratios of the medians before / after (> 1: the sampler got faster). Writes JSON (--out,
default reports/bench_sampler.json). Never asserts a time.

    .venv/bin/python benchmarks/bench_sampler.py [--tokens 40] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCABS = (49_152, 151_936)
SETTINGS = {
    "greedy": {"temperature": 0.0},
    "temperature 0.8": {"temperature": 0.8},
    "top_k 40": {"temperature": 0.8, "top_k": 40},
    "top_p 0.9": {"temperature": 0.8, "top_p": 0.9},
    "top_p 0.99": {"temperature": 0.8, "top_p": 0.99},
    "min_p 0.05": {"temperature": 0.8, "min_p": 0.05},
    "repetition_penalty 1.1": {"temperature": 0.8, "repetition_penalty": 1.1},
    "top_k 40 + top_p 0.95 + min_p 0.05 + repetition_penalty 1.1":
        {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.1},
}


def pipeline_sample(sampler, row, history) -> int:
    """Sampler.sample as it drew before sampling_fast: the documented pipeline over the whole vocabulary."""
    from worker.sampling import (
        _scaling_overflows,
        apply_repetition_penalty,
        greedy_pick,
        inverse_cdf_pick,
        sampling_distribution,
    )

    p = sampler.params
    row = np.asarray(row)
    if not np.all(np.isfinite(row)):
        raise FloatingPointError("non-finite logits")
    with np.errstate(over="ignore"):
        penalised = apply_repetition_penalty(row, history, p.repetition_penalty, p.repeat_last_n)
    if p.greedy or _scaling_overflows(penalised, p.temperature):
        return greedy_pick(penalised)
    return inverse_cdf_pick(sampling_distribution(row, p, history), float(sampler.rng.random()))


def time_setting(vocab: int, params: dict, tokens: int, seed: int = 2024) -> dict:
    from worker.sampling import Sampler, SamplingParams

    rng = np.random.default_rng(seed)
    rows = [rng.normal(0.0, 3.0, vocab).astype(np.float32) for _ in range(tokens)]
    history = [int(i) for i in rng.integers(0, vocab, 64)]
    sp = SamplingParams(**params)
    before, after = Sampler(sp, seed), Sampler(sp, seed)
    t_before, t_after, ids_before, ids_after = [], [], [], []
    for row in rows:                       # alternate, so both see the same machine load
        t0 = time.perf_counter()
        ids_before.append(pipeline_sample(before, row, history))
        t1 = time.perf_counter()
        ids_after.append(after.sample(row, history))
        t2 = time.perf_counter()
        t_before.append(t1 - t0)
        t_after.append(t2 - t1)
    ms_before, ms_after = 1e3 * statistics.median(t_before), 1e3 * statistics.median(t_after)
    best_before, best_after = 1e3 * min(t_before), 1e3 * min(t_after)
    return {"ms_per_token_before": round(ms_before, 4), "ms_per_token_after": round(ms_after, 4),
            "ratio_before_over_after": round(ms_before / ms_after, 2),
            "best_ms_per_token_before": round(best_before, 4), "best_ms_per_token_after": round(best_after, 4),
            "same_ids": ids_before == ids_after}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=40, help="tokens timed per setting and vocabulary")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_sampler.json"))
    args = ap.parse_args(argv)
    results = {str(v): {name: time_setting(v, params, args.tokens) for name, params in SETTINGS.items()}
               for v in VOCABS}
    report = {
        "benchmark": "host sampler, ms per token: pipeline (before) vs Sampler.sample (after)",
        "commit": _commit(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "numpy": np.__version__},
        "tokens_per_setting": args.tokens,
        "results_by_vocab": results,
        "all_same_ids": all(r["same_ids"] for per_vocab in results.values() for r in per_vocab.values()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0 if report["all_same_ids"] else 1


if __name__ == "__main__":
    sys.exit(main())
