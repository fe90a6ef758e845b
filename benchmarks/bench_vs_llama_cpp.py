"""Our worker beside llama.cpp's llama-bench on the same GPU and the same GGUF files.

    python benchmarks/bench_vs_llama_cpp.py write-gpt-oss OUT.gguf --tokenizer-from FILE.gguf
    python benchmarks/bench_vs_llama_cpp.py ours  --model NAME=FILE ... --out ours.json
    python benchmarks/bench_vs_llama_cpp.py peer  --llama-bench BIN --model NAME=FILE ... --out peer.json
    python benchmarks/bench_vs_llama_cpp.py table ours.json peer.json --out reports/bench_vs_llama_cpp.json

scripts/gpu-bench.sh runs all of it on the GPU machine in one call. Metrics, both tools at batch 1:
- decode tg128: 128 single-token steps from an empty cache, each ending with the logits of the
  token on the host (llama-bench's test_gen: one llama_decode per token, then a synchronize with
  the logits copied out). Ours keeps one cache for the warm-up and the timed runs, as llama-bench
  keeps its context: the captured decode graph is reused (its capture is reported apart).
- prefill ppN (N = 128, 512, 2048): N prompt tokens from an empty cache in one forward pass
  (llama-bench: its default batch 2048 / micro-batch 512), tokens/s.
- time to first token at 128 prompt tokens: prefill, the last logits to the host and the argmax.
  llama-bench reports no TTFT; its figure here is 128 / pp128 (its prompt time, the floor of its
  TTFT), so the comparison flatters llama.cpp slightly. Ours is measured twice: repeated on one
  KV cache, as llama-bench repeats its prompt (from the second pass of a prompt length our prefill
  replays a captured graph: worker/backend/cuda_graph.py), and as a served job (`ttft_served_job_ms_at_128`):
  Engine.generate with a 128-token prompt and max_tokens 32, from the call to its first Token
  event, each job on a new KV cache of the engine's bucketed capacity, after two warm-up jobs (the
  worker has seen the prompt length before: the first job's prefill runs op by op, the second's
  is captured; later jobs replay the prefill and decode graphs of earlier jobs).
  The prefill figures ppN, repeated on one cache, replay their graph too.
Ratios are ours / llama.cpp for speeds (> 1: we are faster) and llama.cpp / ours for TTFT (> 1: we
are faster). Each figure is the median of --repeats timed runs after a warm-up. Never asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREFILL = (128, 512, 2048)
DECODE = 128
TTFT_PROMPT = 128

# GPT-OSS-20B (openai/gpt-oss-20b config.json): the shape of the third benchmark model.
GPT_OSS_20B = dict(layers=24, hidden=2880, heads=64, kv_heads=8, head_dim=64, experts=32, experts_used=4,
                   expert_ffn=2880, sliding_window=128, ctx=131072, rope_theta=150000.0, yarn_factor=32.0,
                   yarn_orig_ctx=4096)


# -- the GPT-OSS-20B-shaped file -------------------------------------------------------------------

def _tokenizer_fields(path: Path) -> list:
    """The tokenizer.* metadata of a GGUF file (key, value, type, array element type)."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = []
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            fields.append((key, field.contents(), vtype, sub_type))
    return fields


def gpt_oss_20b_config(layers: int | None = None) -> dict:
    """GPT_OSS_20B, with fewer layers when asked (a per-layer profile needs only a few)."""
    return dict(GPT_OSS_20B, layers=layers or GPT_OSS_20B["layers"])


def gpt_oss_20b_tensors(vocab: int, layers: int | None = None) -> list[tuple[str, tuple, object, float]]:
    """(name, shape rows-first, GGML type, F32 base value) of every tensor of the GPT-OSS-20B-shaped file."""
    import gguf

    c, Q = gpt_oss_20b_config(layers), gguf.GGMLQuantizationType
    D, E, F, hd = c["hidden"], c["experts"], c["expert_ffn"], c["head_dim"]
    q_dim, kv_dim = c["heads"] * hd, c["kv_heads"] * hd
    tensors: list[tuple[str, tuple, object, float]] = [      # name, shape (GGUF order reversed), type, F32 base
        ("token_embd.weight", (vocab, D), Q.Q8_0, 0.0)]
    for i in range(c["layers"]):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (D,), Q.F32, 1.0),
            (p + "attn_q.weight", (q_dim, D), Q.Q8_0, 0.0), (p + "attn_q.bias", (q_dim,), Q.F32, 0.0),
            (p + "attn_k.weight", (kv_dim, D), Q.Q8_0, 0.0), (p + "attn_k.bias", (kv_dim,), Q.F32, 0.0),
            (p + "attn_v.weight", (kv_dim, D), Q.Q8_0, 0.0), (p + "attn_v.bias", (kv_dim,), Q.F32, 0.0),
            (p + "attn_output.weight", (D, q_dim), Q.Q8_0, 0.0), (p + "attn_output.bias", (D,), Q.F32, 0.0),
            (p + "attn_sinks.weight", (c["heads"],), Q.F32, 0.0),
            (p + "post_attention_norm.weight", (D,), Q.F32, 1.0),
            (p + "ffn_gate_inp.weight", (E, D), Q.F32, 0.0), (p + "ffn_gate_inp.bias", (E,), Q.F32, 0.0),
            (p + "ffn_gate_exps.weight", (E, F, D), Q.MXFP4, 0.0), (p + "ffn_gate_exps.bias", (E, F), Q.F32, 0.0),
            (p + "ffn_up_exps.weight", (E, F, D), Q.MXFP4, 0.0), (p + "ffn_up_exps.bias", (E, F), Q.F32, 0.0),
            (p + "ffn_down_exps.weight", (E, D, F), Q.MXFP4, 0.0), (p + "ffn_down_exps.bias", (E, D), Q.F32, 0.0),
        ]
    tensors += [("output_norm.weight", (D,), Q.F32, 1.0), ("output.weight", (vocab, D), Q.Q8_0, 0.0)]
    return tensors


def write_gpt_oss_20b_shaped(path: Path, tokenizer_from: Path, seed: int = 0, layers: int | None = None) -> Path:
    """GPT-OSS-20B's shape in our tiny GPT-OSS fixture's tensor layout (fixtures/tiny_gpt_oss.py:
    llama.cpp's converter names, stacked [E, N, K] experts): experts MXFP4, the other matrices Q8_0,
    vectors F32, with a real vocabulary (llama.cpp refuses a BPE vocabulary without merges).

    Quantized tensors are seeded random blocks of signed values (random_blocks); F32 vectors are drawn so
    that norms are ~1. Signed weights matter: the router then spreads a prompt's tokens over the experts,
    as a trained model does, and the expert products do a real prefill's work. (Random bytes below 0x30,
    as make_twin.py writes, make every Q8_0 weight positive: one direction then dominates every token's
    hidden state, and every token of a prompt chose the same 4 experts in every layer.) About 11 GB with
    a 49,152-token vocabulary."""
    import gguf

    c, Q = gpt_oss_20b_config(layers), gguf.GGMLQuantizationType
    fields = _tokenizer_fields(tokenizer_from)
    vocab = next(len(v) for k, v, _, _ in fields if k == "tokenizer.ggml.tokens")
    D, E, F, hd = c["hidden"], c["experts"], c["expert_ffn"], c["head_dim"]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT_OSS])
    w.add_name("random-gpt-oss-20b-shape")
    w.add_context_length(c["ctx"])
    w.add_embedding_length(D)
    w.add_block_count(c["layers"])
    w.add_feed_forward_length(F)
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(E)
    w.add_expert_used_count(c["experts_used"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)
    w.add_sliding_window(c["sliding_window"])
    w.add_expert_feed_forward_length(F)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(c["yarn_factor"])
    w.add_rope_scaling_orig_ctx_len(c["yarn_orig_ctx"])
    for key, value, vtype, sub_type in fields:
        w.add_key_value(key, value, vtype, sub_type)

    tensors = gpt_oss_20b_tensors(vocab, c["layers"])
    for name, shape, qtype, _ in tensors:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape)) // block * size
        # float32 as the "dtype": with raw_dtype given, gguf-py then takes `shape` as element counts
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    rng = np.random.default_rng(seed)
    align = w.data_alignment
    # 8 distinct random chunks a format, cycled (whole blocks each): drawing 11 GB of random blocks would take
    # longer than the benchmark itself, and the kernels' speed does not depend on which values repeat
    pools = {}
    for qtype in sorted({q for _, _, q, _ in tensors if q != Q.F32}):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        total = sum(int(np.prod(shape)) // block * size for _, shape, q, _ in tensors if q == qtype)
        n_blocks = min(1 << 26, total) // size
        pools[qtype] = [random_blocks(qtype, n_blocks, D, rng) for _ in range(min(8, -(-total // (n_blocks * size))))]
    written = 0
    with open(path, "ab") as f:
        f.write(b"\0" * (-f.tell() % align))
        for name, shape, qtype, base in tensors:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = int(np.prod(shape)) // block * size
            if qtype == Q.F32:
                scale = 1.0 if "gate_inp" in name or "sinks" in name else 0.02
                f.write((base + scale * rng.standard_normal(int(np.prod(shape)))).astype(np.float32).tobytes())
            else:
                pool, left = pools[qtype], nbytes
                while left > 0:
                    chunk = pool[written % len(pool)]
                    n = min(left, len(chunk))
                    f.write(chunk[:n])
                    written += 1
                    left -= n
            f.write(b"\0" * (-nbytes % align))
    return path


def random_blocks(qtype, n_blocks: int, width: int, rng: np.random.Generator) -> bytes:
    """n_blocks stored Q8_0 or MXFP4 blocks of random signed values with a standard deviation of about
    1 / sqrt(width), so that a product over `width` inputs keeps its input's scale: Q8_0's quants uniform in
    -127..127 under one float16 scale, MXFP4's codes uniform (E2M1 values of both signs, RMS 2.93) under one
    power-of-two scale."""
    import gguf

    Q, target = gguf.GGMLQuantizationType, 1.0 / np.sqrt(width)
    if qtype == Q.Q8_0:
        blocks = np.empty((n_blocks, 34), np.uint8)
        blocks[:, :2] = np.array([target / np.sqrt((127 * 128) / 3)], np.float16).view(np.uint8)
        blocks[:, 2:] = rng.integers(-127, 128, (n_blocks, 32), dtype=np.int8).view(np.uint8)
    elif qtype == Q.MXFP4:
        blocks = np.empty((n_blocks, 17), np.uint8)
        blocks[:, 0] = 127 + int(round(np.log2(target / np.sqrt(68.5 / 8))))
        blocks[:, 1:] = rng.integers(0, 256, (n_blocks, 16), dtype=np.uint8)
    else:
        raise ValueError(f"random_blocks writes Q8_0 and MXFP4 blocks, not {qtype!r}")
    return blocks.tobytes()


# -- ours --------------------------------------------------------------------------------------------

def _median_time(fn, repeats: int) -> float:
    fn()                                           # warm-up: compilation, workspace, graph capture
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_ours(name: str, path: Path, repeats: int, decode_graphs: bool | None = None) -> dict:
    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    gf = GGUFModelFile.open(path)
    backend = CudaBackend(decode_graphs=decode_graphs)
    t0 = time.perf_counter()
    model = load_model(gf, backend)
    backend.synchronize()
    row = {"model": name, "file": Path(path).name, "file_bytes": Path(path).stat().st_size,
           "architecture": model.config.architecture, "vocab": model.config.vocab_size,
           "load_seconds": round(time.perf_counter() - t0, 3), "device": backend.device_name,
           "decode_graphs": backend.graphs.enabled}
    rng = np.random.default_rng(0)
    V = model.config.vocab_size

    def tokens(n):
        return rng.integers(3, V, size=n)

    def prefill(n):
        cache = model.new_cache(n)
        try:
            def run():
                backend.to_host(model.forward(tokens(n), cache, 0)[-1])
            return n / _median_time(run, repeats)
        finally:
            backend.free_kv_cache(cache)

    row["prefill_tok_s"] = {f"pp{n}": prefill(n) for n in PREFILL}

    cache = model.new_cache(TTFT_PROMPT)
    try:
        def first_token():
            return int(np.argmax(backend.to_host(model.forward(tokens(TTFT_PROMPT), cache, 0)[-1])))
        row["ttft_ms_at_128"] = 1e3 * _median_time(first_token, repeats)
    finally:
        backend.free_kv_cache(cache)

    row["ttft_served_job_ms_at_128"] = 1e3 * _served_job_ttft(model, tokens, repeats)

    cache = model.new_cache(DECODE)
    step_ids = [np.array([t]) for t in tokens(DECODE)]
    try:
        def generate():
            for pos, ids in enumerate(step_ids):
                backend.to_host(model.forward(ids, cache, pos)[-1])
        first = time.perf_counter()
        backend.to_host(model.forward(step_ids[0], cache, 0)[-1])      # captures, unless a served job did
        row["first_decode_step_ms"] = 1e3 * (time.perf_counter() - first)
        row["decode_tok_s"] = {f"tg{DECODE}": DECODE / _median_time(generate, repeats)}
    finally:
        backend.free_kv_cache(cache)
    row["graph_stats"] = {k: v for k, v in backend.graphs.stats.items() if k != "failures"}
    row["graph_failures"] = backend.graphs.stats["failures"][:3]
    row["memory"] = backend.memory_report()
    return row


def _served_job_ttft(model, tokens, repeats: int) -> float:
    """Median seconds from Engine.generate to its first Token event for TTFT_PROMPT-token prompts, each job
    on its own new KV cache as the worker serves it (the job is then closed, which frees its cache)."""
    from fixtures.engine_greedy import IdsOnly  # ids in, no text out: the prompt is ids
    from worker.engine import Engine, Token
    from worker.sampling import SamplingParams

    engine = Engine(model, IdsOnly())
    params = SamplingParams(temperature=0.0, max_tokens=32, seed=0)

    def job() -> float:
        prompt = [int(t) for t in tokens(TTFT_PROMPT)]
        t0 = time.perf_counter()
        events = engine.generate(prompt, params)
        try:
            for event in events:
                if isinstance(event, Token):
                    return time.perf_counter() - t0
        finally:
            events.close()
        raise RuntimeError("the job produced no token")

    job(), job()                                   # the prompt length seen before (op by op, then captured)
    return statistics.median(job() for _ in range(repeats))


# -- llama.cpp -----------------------------------------------------------------------------------------

def bench_peer(name: str, path: Path, llama_bench: str, repeats: int) -> dict:
    cmd = [llama_bench, "-m", str(path), "-p", ",".join(map(str, PREFILL)), "-n", str(DECODE), "-fa", "1",
           "-ngl", "99", "-r", str(repeats), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        return {"model": name, "status": f"FAILED: llama-bench exit {proc.returncode}: {proc.stderr[-800:]}"}
    results = json.loads(proc.stdout)
    row = {"model": name, "file": Path(path).name, "command": " ".join(cmd[1:]),
           "build_commit": results[0].get("build_commit"), "build_number": results[0].get("build_number"),
           "gpu_info": results[0].get("gpu_info"), "prefill_tok_s": {}, "decode_tok_s": {}}
    for r in results:
        if r["n_gen"] == 0:
            row["prefill_tok_s"][f"pp{r['n_prompt']}"] = r["avg_ts"]
        elif r["n_prompt"] == 0:
            row["decode_tok_s"][f"tg{r['n_gen']}"] = r["avg_ts"]
    pp = row["prefill_tok_s"].get(f"pp{TTFT_PROMPT}")
    row["ttft_ms_at_128"] = 1e3 * TTFT_PROMPT / pp if pp else None
    return row


# -- the side-by-side table ---------------------------------------------------------------------------

def side_by_side(ours: dict, peer: dict, meta: dict) -> dict:
    rows = []
    peers = {r["model"]: r for r in peer["rows"]}
    for o in ours["rows"]:
        p = peers.get(o["model"], {})
        row = {"model": o["model"], "ours": o, "llama_cpp": p, "ratios_ours_over_llama_cpp": {}}
        for kind in ("decode_tok_s", "prefill_tok_s"):
            for metric, value in (o.get(kind) or {}).items():
                ref = (p.get(kind) or {}).get(metric)
                row["ratios_ours_over_llama_cpp"][metric] = value / ref if ref and value else None
        if o.get("ttft_ms_at_128") and p.get("ttft_ms_at_128"):
            row["ratios_ours_over_llama_cpp"]["ttft_speedup_at_128"] = p["ttft_ms_at_128"] / o["ttft_ms_at_128"]
            if o.get("ttft_served_job_ms_at_128"):
                row["ratios_ours_over_llama_cpp"]["ttft_served_job_speedup_at_128"] = (
                    p["ttft_ms_at_128"] / o["ttft_served_job_ms_at_128"])
        rows.append(row)
    return {"benchmark": "ours vs llama.cpp llama-bench, batch 1, same GPU and files", **meta, "rows": rows}


def print_table(report: dict) -> None:
    metrics = [f"tg{DECODE}"] + [f"pp{n}" for n in PREFILL]
    print(f"\n{report.get('device', '')}  ours {report.get('ours_commit', '?')}  "
          f"llama.cpp {report.get('llama_cpp', '?')}")
    print(f"{'model':16} {'metric':7} {'ours':>10} {'llama.cpp':>10} {'ratio':>6}")
    for row in report["rows"]:
        o, p, r = row["ours"], row["llama_cpp"], row["ratios_ours_over_llama_cpp"]
        if "status" in o or "status" in p:
            print(f"{row['model']:16} {o.get('status', '')} {p.get('status', '')}")
        for m in metrics:
            kind = "decode_tok_s" if m.startswith("tg") else "prefill_tok_s"
            ov, pv = (o.get(kind) or {}).get(m), (p.get(kind) or {}).get(m)
            print(f"{row['model']:16} {m:7} {ov or float('nan'):10.1f} {pv or float('nan'):10.1f} "
                  f"{r.get(m) or float('nan'):6.2f}")
        ot, pt = o.get("ttft_ms_at_128"), p.get("ttft_ms_at_128")
        print(f"{row['model']:16} {'ttft ms':7} {ot or float('nan'):10.2f} {pt or float('nan'):10.2f} "
              f"{r.get('ttft_speedup_at_128') or float('nan'):6.2f}")
        of = o.get("ttft_served_job_ms_at_128")
        print(f"{row['model']:16} {'ttft job':7} {of or float('nan'):10.2f} {pt or float('nan'):10.2f} "
              f"{r.get('ttft_served_job_speedup_at_128') or float('nan'):6.2f}")


def _release_device_memory() -> None:
    """The last model's buffers back to the device before the next model loads."""
    import gc

    from worker.backend.cuda_runtime import device_pool

    gc.collect()
    device_pool().free_all_blocks()


def _models(specs: list[str]) -> list[tuple[str, Path]]:
    return [(s.split("=", 1)[0], Path(s.split("=", 1)[1])) for s in specs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("write-gpt-oss")
    g.add_argument("out")
    g.add_argument("--tokenizer-from", required=True)
    g.add_argument("--layers", type=int, default=None,
                   help="fewer layers than GPT-OSS-20B's 24 (a per-layer profile needs only a few)")
    for name in ("ours", "peer"):
        s = sub.add_parser(name)
        s.add_argument("--model", action="append", required=True, help="NAME=FILE.gguf")
        s.add_argument("--repeats", type=int, default=3)
        s.add_argument("--out", required=True)
        if name == "peer":
            s.add_argument("--llama-bench", required=True)
        else:
            s.add_argument("--no-graphs", action="store_true", help="decode op by op (for a before/after)")
    t = sub.add_parser("table")
    t.add_argument("ours")
    t.add_argument("peer")
    t.add_argument("--out", required=True)
    t.add_argument("--meta", default="{}", help="JSON merged into the report (device, commit, versions)")
    args = ap.parse_args(argv)

    if args.cmd == "write-gpt-oss":
        t0 = time.perf_counter()
        write_gpt_oss_20b_shaped(Path(args.out), Path(args.tokenizer_from), layers=args.layers)
        size = Path(args.out).stat().st_size / 2**30
        print(f"wrote {args.out} ({size:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
        return 0
    if args.cmd in ("ours", "peer"):
        rows = []
        for name, path in _models(args.model):
            try:
                if args.cmd == "ours":
                    row = bench_ours(name, path, args.repeats, decode_graphs=False if args.no_graphs else None)
                    _release_device_memory()
                else:
                    row = bench_peer(name, path, args.llama_bench, args.repeats)
            except Exception as exc:  # noqa: BLE001 — one model's failure is reported, the others still run
                import traceback

                traceback.print_exc()
                row = {"model": name, "status": f"FAILED: {type(exc).__name__}: {exc}"}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "memory"}), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)      # after each model: a timeout keeps the rest
            Path(args.out).write_text(json.dumps({"tool": args.cmd, "rows": rows}, indent=1))
        return 0
    meta = json.loads(args.meta)
    meta.setdefault("ours_commit", os.environ.get("M0_COMMIT", "unknown"))
    # the kernel choices set through the environment (M0_CUDA_MOE_GEMM, ...): the commit's defaults where empty
    meta.setdefault("ours_kernel_env", {k: v for k, v in sorted(os.environ.items()) if k.startswith("M0_CUDA_")})
    report = side_by_side(json.loads(Path(args.ours).read_text()), json.loads(Path(args.peer).read_text()), meta)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
