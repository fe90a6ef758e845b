"""Decode tok/s, prefill tok/s and time to first token on the GPU: our CUDA backend vs a peer.

Models: SmolLM2-135M-Instruct (Q4_1/Q8_0, when installed) and a full-size Qwen2.5-0.5B-shaped
random model (24 layers, width 896, 14/2 heads, FFN 4864, vocab 151936, tied embeddings, QKV
bias) written here with gguf-py in a Q4_K_M-like mix (Q8_0 embeddings and V, Q4_1 for the rows
of 896 that K-quants cannot tile, Q4_K/Q6_K for the FFN down projection).

Peer, in the same process on the same GPU: a plain PyTorch implementation of the same Llama/Qwen2
forward with the weights dequantized to float16 (eager mode, SDPA attention, float16 KV cache).
Reported: ratios ours/peer (>1 means we are faster), greedy-token agreement between the two, model
load seconds and peak host RSS while loading (bounded pinned staging). Writes JSON (--out).
Never asserts a time. Each timed run starts a new KV cache, so its first decode step captures the
decode graph (worker/backend/cuda_graph.py). The comparison with llama.cpp on the same files is
benchmarks/bench_vs_llama_cpp.py (scripts/gpu-bench.sh).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- the Qwen2.5-0.5B-shaped model ------------------------------------------------------------------

QWEN05 = dict(hidden=896, layers=24, heads=14, kv_heads=2, ffn=4864, vocab=151936, ctx=32768)

# stored scale fields per format: (byte offset, magnitude) so that weights are ~N(0, 0.02)-sized
_SCALES = {"Q8_0": [(0, 2e-4)], "Q4_1": [(0, 4e-3), (2, 3e-2)], "Q4_K": [(0, 2e-4), (2, 2e-4)],
           "Q6_K": [(208, 5e-5)]}


def _blocks(qtype, n_values: int, rng) -> np.ndarray:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_values // block, size), dtype=np.uint8)
    for offset, magnitude in _SCALES[qtype.name]:
        scale = rng.uniform(-magnitude, magnitude, size=len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    if qtype.name == "Q6_K":
        blocks[:, 192:208] = rng.integers(-40, 40, size=(len(blocks), 16), dtype=np.int8).view(np.uint8)
    return blocks


def write_qwen05_shaped(path: Path, seed: int = 0) -> Path:
    import gguf

    Q = gguf.GGMLQuantizationType
    c = QWEN05
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("random-qwen2.5-0.5B-shape")
    w.add_context_length(c["ctx"])
    w.add_embedding_length(c["hidden"])
    w.add_block_count(c["layers"])
    w.add_feed_forward_length(c["ffn"])
    w.add_head_count(c["heads"])
    w.add_head_count_kv(c["kv_heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1000000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(c["vocab"])])
    w.add_token_types([1] * c["vocab"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    D, F, hd = c["hidden"], c["ffn"], c["hidden"] // c["heads"]
    kv = c["kv_heads"] * hd

    def quant(name, shape, qtype):
        raw = _blocks(qtype, int(np.prod(shape)), rng).reshape(*shape[:-1], -1)
        w.add_tensor(name, raw, raw_dtype=qtype)

    def vec(name, n, base=0.0, scale=0.02):
        w.add_tensor(name, (base + scale * rng.standard_normal(n)).astype(np.float32))

    quant("token_embd.weight", (c["vocab"], D), Q.Q8_0)
    vec("output_norm.weight", D, 1.0, 0.1)
    for i in range(c["layers"]):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", D, 1.0, 0.1)
        vec(p + "ffn_norm.weight", D, 1.0, 0.1)
        quant(p + "attn_q.weight", (D, D), Q.Q4_1)
        quant(p + "attn_k.weight", (kv, D), Q.Q4_1)
        quant(p + "attn_v.weight", (kv, D), Q.Q8_0)
        vec(p + "attn_q.bias", D)
        vec(p + "attn_k.bias", kv)
        vec(p + "attn_v.bias", kv)
        quant(p + "attn_output.weight", (D, D), Q.Q4_1)
        quant(p + "ffn_gate.weight", (F, D), Q.Q4_1)
        quant(p + "ffn_up.weight", (F, D), Q.Q4_1)
        quant(p + "ffn_down.weight", (D, F), Q.Q6_K if i % 3 == 0 else Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- the PyTorch peer -------------------------------------------------------------------------------

class TorchLlama:
    """Llama/Qwen2 forward in eager PyTorch, float16 weights dequantized from the same GGUF."""

    def __init__(self, gf, device="cuda"):
        import torch

        from worker.quant import dequantize

        self.torch, self.cfg, self.device = torch, gf.config, device

        def t(name, dtype=torch.float16):
            return torch.from_numpy(dequantize(gf.tensor(name))).to(device=device, dtype=dtype)

        cfg = self.cfg
        self.embd = t("token_embd.weight")
        self.out = t("output.weight") if "output.weight" in gf.tensors else self.embd
        self.out_norm = t("output_norm.weight", torch.float32)
        self.layers = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."

            def opt(n, p=p):
                return t(p + n) if p + n in gf.tensors else None
            self.layers.append(dict(
                an=t(p + "attn_norm.weight", torch.float32), fn=t(p + "ffn_norm.weight", torch.float32),
                q=t(p + "attn_q.weight"), k=t(p + "attn_k.weight"), v=t(p + "attn_v.weight"),
                bq=opt("attn_q.bias"), bk=opt("attn_k.bias"), bv=opt("attn_v.bias"), o=t(p + "attn_output.weight"),
                g=t(p + "ffn_gate.weight"), u=t(p + "ffn_up.weight"), d=t(p + "ffn_down.weight")))
        self.bytes = sum(v.numel() * v.element_size() for L in self.layers for v in L.values() if v is not None) \
            + self.embd.numel() * 2

    def new_cache(self, n_ctx):
        c, torch = self.cfg, self.torch
        shape = (c.n_layers, 1, c.n_kv_heads, n_ctx, c.head_dim)
        return tuple(torch.zeros(shape, dtype=torch.float16, device=self.device) for _ in range(2))

    def _rope(self, x, cos, sin):
        # x [1, H, T, hd]; cos/sin [T, dim/2]
        if self.cfg.rope.style == "neox":
            a, b = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
            return self.torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        return self.torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def forward(self, ids, cache, start):
        torch, F, c = self.torch, self.torch.nn.functional, self.cfg
        from worker.rope import rope_cos_sin

        T = len(ids)
        cos, sin = (torch.from_numpy(a).to(self.device, torch.float16)
                    for a in rope_cos_sin(np.arange(start, start + T), c.rope))
        x = self.embd[torch.as_tensor(ids, device=self.device)]
        kc, vc = cache
        for i, L in enumerate(self.layers):
            h = F.rms_norm(x.float(), (c.hidden_size,), L["an"], c.norm_eps).half()
            q = F.linear(h, L["q"], L["bq"]).view(T, c.n_heads, c.head_dim).transpose(0, 1)[None]
            k = F.linear(h, L["k"], L["bk"]).view(T, c.n_kv_heads, c.head_dim).transpose(0, 1)[None]
            v = F.linear(h, L["v"], L["bv"]).view(T, c.n_kv_heads, c.head_dim).transpose(0, 1)[None]
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            kc[i, :, :, start:start + T] = k
            vc[i, :, :, start:start + T] = v
            keys, values = kc[i, :, :, :start + T], vc[i, :, :, :start + T]
            a = F.scaled_dot_product_attention(q, keys, values, is_causal=(T > 1 and start == 0), enable_gqa=True)
            x = x + F.linear(a[0].transpose(0, 1).reshape(T, -1), L["o"])
            h = F.rms_norm(x.float(), (c.hidden_size,), L["fn"], c.norm_eps).half()
            x = x + F.linear(F.silu(F.linear(h, L["g"])) * F.linear(h, L["u"]), L["d"])
        h = F.rms_norm(x.float(), (c.hidden_size,), self.out_norm, c.norm_eps).half()
        return F.linear(h, self.out).float()


# -- timing -----------------------------------------------------------------------------------------

def run_generation(forward, new_cache, argmax, sync, prompt, steps):
    """(ttft_s, prefill_s, decode_s, tokens): prefill + first token, then `steps` decode steps."""
    cache = new_cache(len(prompt) + steps + 1)
    sync()
    t0 = time.perf_counter()
    logits = forward(prompt, cache, 0)
    sync()
    t_prefill = time.perf_counter() - t0
    tokens = [argmax(logits)]
    ttft = time.perf_counter() - t0
    t1 = time.perf_counter()
    pos = len(prompt)
    for _ in range(steps):
        logits = forward(np.array([tokens[-1]]), cache, pos)
        tokens.append(argmax(logits))
        pos += 1
    sync()
    decode = time.perf_counter() - t1
    return ttft, t_prefill, decode, tokens


def bench_model(name, path, prompt_len, steps, repeats, peer=True):
    from worker.backend.cuda import CudaBackend
    from worker.backend.upload import measure_peak_rss
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    gf = GGUFModelFile.open(path)
    backend = CudaBackend()
    t0 = time.perf_counter()
    rss, model = measure_peak_rss(lambda: load_model(gf, backend))
    backend.synchronize()
    load_s = time.perf_counter() - t0
    stored = sum(i.nbytes for i in gf.tensors.values())
    rng = np.random.default_rng(1)
    prompt = rng.integers(3, model.config.vocab_size, size=prompt_len)
    row = {"model": name, "file_bytes": int(Path(path).stat().st_size), "weights_bytes": int(stored),
           "load_seconds": load_s, "load_peak_rss_above_baseline": rss["peak_above_baseline"],
           "load_peak_rss": rss["peak"], "rss_method": rss["method"],
           "staging_bytes": backend._stager.capacity_bytes if backend._stager else 0,
           "prompt_tokens": prompt_len, "decode_steps": steps, "device": backend.device_name,
           "residency": backend.verify_residency()["ok"], "memory": backend.memory_report()}

    def ours_argmax(logits):
        return int(backend.argmax(logits[-1]))

    runs = []
    for _ in range(repeats + 1):                    # first run: warm-up (kernel compilation)
        caches = []

        def new_cache(n, caches=caches):
            caches.append(model.new_cache(n))
            return caches[-1]

        runs.append(run_generation(model.forward, new_cache, ours_argmax, backend.synchronize, prompt, steps))
        backend.free_kv_cache(caches[-1])
    runs = runs[1:]
    ours = {"ttft_s": statistics.median(r[0] for r in runs),
            "prefill_tok_s": prompt_len / statistics.median(r[1] for r in runs),
            "decode_tok_s": steps / statistics.median(r[2] for r in runs)}
    row["ours"] = ours
    our_tokens = runs[0][3]
    if peer:
        import torch

        with torch.inference_mode():
            tm = TorchLlama(gf)

            def t_argmax(logits):
                return int(torch.argmax(logits[-1]).item())

            truns = []
            for _ in range(repeats + 1):
                truns.append(run_generation(tm.forward, tm.new_cache, t_argmax, torch.cuda.synchronize, prompt, steps))
            truns = truns[1:]
        peer_row = {"name": f"torch {torch.__version__} eager, float16 dequantized weights, SDPA",
                    "weights_bytes": int(tm.bytes),
                    "ttft_s": statistics.median(r[0] for r in truns),
                    "prefill_tok_s": prompt_len / statistics.median(r[1] for r in truns),
                    "decode_tok_s": steps / statistics.median(r[2] for r in truns)}
        peer_tokens = truns[0][3]
        row["peer"] = peer_row
        row["ratios_ours_over_peer"] = {
            "decode_tok_s": ours["decode_tok_s"] / peer_row["decode_tok_s"],
            "prefill_tok_s": ours["prefill_tok_s"] / peer_row["prefill_tok_s"],
            "ttft_speedup": peer_row["ttft_s"] / ours["ttft_s"]}
        row["greedy_tokens_agree_with_peer"] = sum(a == b for a, b in zip(our_tokens, peer_tokens))
        row["greedy_tokens_compared"] = len(our_tokens)
        del tm
        torch.cuda.empty_cache()
    model = None                                    # its weights go back to the device with the pool's blocks
    backend.release_cached_memory()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench_decode.json"))
    ap.add_argument("--models", default="smollm2,qwen2.5-0.5b-shape")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args(argv)
    from fixtures.paths import smollm2_path

    results = {"benchmark": "decode/prefill/ttft, batch 1", "rows": []}
    for name in args.models.split(","):
        try:
            if name == "smollm2":
                path = smollm2_path()
                if path is None:
                    results["rows"].append({"model": name, "status": "NOT RUN: SmolLM2 GGUF not installed"})
                    continue
            else:
                path = Path(tempfile.gettempdir()) / "qwen2.5-0.5b-shape.gguf"
                if not path.exists():
                    t0 = time.perf_counter()
                    write_qwen05_shaped(path)
                    size = path.stat().st_size / 2**20
                    print(f"wrote {path} ({size:.0f} MiB) in {time.perf_counter() - t0:.1f}s", flush=True)
            row = bench_model(name, path, args.prompt, args.steps, args.repeats, peer=not args.no_peer)
        except Exception as exc:  # noqa: BLE001 — one model's failure is reported, the other still runs
            import traceback

            traceback.print_exc()
            row = {"model": name, "status": f"FAILED: {type(exc).__name__}: {exc}"}
        results["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "memory"}, indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    for row in results["rows"]:
        if "ours" in row:
            r = row.get("ratios_ours_over_peer", {})
            o, nan = row["ours"], float("nan")
            print(f"{row['model']:24} decode {o['decode_tok_s']:8.1f} tok/s  prefill {o['prefill_tok_s']:9.1f} tok/s"
                  f"  ttft {o['ttft_s'] * 1e3:7.2f} ms | vs peer: decode x{r.get('decode_tok_s', nan):.2f}"
                  f" prefill x{r.get('prefill_tok_s', nan):.2f} ttft x{r.get('ttft_speedup', nan):.2f}"
                  f" | load {row['load_seconds']:.2f}s peak RSS +{row['load_peak_rss_above_baseline'] / 2**20:.0f} MiB")
        else:
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
