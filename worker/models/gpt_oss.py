"""GPT-OSS (GGUF architecture "gpt-oss"): pre-norm transformer with sink attention and MoE.

Per block i, with n = RMSNorm(x) and m = RMSNorm(h):
    q, k, v = Wq·n + bq, Wk·n + bk, Wv·n + bv                  (GQA: fewer K/V heads)
    h = x + Wo · SinkAttention(rope(q), rope(k), v) + bo         (sliding window on even i)
    y = h + Σ_{e ∈ topk(r)} p_e · (Wdown_e · swiglu_oai(Wgate_e·m + bgate_e, Wup_e·m + bup_e) + bdown_e)
        r = Wrouter·m + brouter,  p = softmax(r[topk(r)])        (softmax over the k chosen only)
logits = Wout · RMSNorm(y)

SinkAttention: softmax over the visible keys plus one learned logit per head (blk.N.attn_sinks)
that only enlarges the denominator. swiglu_oai(g, u) = min(g, 7)·σ(1.702·min(g, 7))·(clip(u,±7)+1).
RoPE: NEOX pairing with YaRN; the YaRN ramp is not rounded to whole pairs (transformers'
`truncate: false` in the published config and OpenAI's reference; llama.cpp rounds).

Experts are stacked [E, N, K] tensors (MXFP4 in the published file), run by the backend's
`mixture_of_experts` op (routing: top-k of E router logits per token, on the host in the
reference, on the device for a CUDA decode token).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.backend.base import top_k_softmax
from worker.errors import UnsupportedModelError
from worker.models.llama import _token_ids
from worker.models.logit_rows import last_row_only
from worker.models.weights import WeightLoader


@dataclass
class GptOssBlock:
    attn_norm: object
    wq: object
    bq: object
    wk: object
    bk: object
    wv: object
    bv: object
    wo: object
    bo: object
    sinks: object
    sliding_window: int          # 0 on full-attention layers
    ffn_norm: object
    router: object
    router_bias: object
    gate_exps: object            # [E, F, D]
    gate_bias: object            # [E, F]
    up_exps: object              # [E, F, D]
    up_bias: object
    down_exps: object            # [E, D, F]
    down_bias: object            # [E, D]


class GptOssModel:
    def __init__(self, gguf_file, backend, progress=None):
        cfg = self.config = gguf_file.config
        self.backend = backend
        if cfg.n_experts < 1 or not 1 <= cfg.n_experts_per_token <= cfg.n_experts:
            raise UnsupportedModelError(
                f"gpt-oss needs experts: expert_count {cfg.n_experts}, expert_used_count {cfg.n_experts_per_token}")
        if cfg.rope is None:
            raise UnsupportedModelError("gpt-oss config has no rope settings")
        self.rope = cfg.rope                # NEOX YaRN, ramp not rounded (worker.gguf.architecture)
        self.swiglu_limit, self.swiglu_alpha = cfg.swiglu_limit, cfg.swiglu_alpha

        w = WeightLoader(gguf_file, backend, progress)
        D, V, F, E = cfg.hidden_size, cfg.vocab_size, cfg.ffn_size, cfg.n_experts
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim

        self.token_embd = w.load("token_embd.weight", (V, D))
        self.blocks = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            if w.has(p + "ffn_gate_up_exps.weight"):      # newer converters: [gate; up] fused
                gate_exps, up_exps = _split_experts(w, p + "ffn_gate_up_exps.weight", (E, 2 * F, D))
                gate_bias, up_bias = _split_experts(w, p + "ffn_gate_up_exps.bias", (E, 2 * F))
            else:
                gate_exps = w.load(p + "ffn_gate_exps.weight", (E, F, D))
                up_exps = w.load(p + "ffn_up_exps.weight", (E, F, D))
                gate_bias, up_bias = w.load(p + "ffn_gate_exps.bias", (E, F)), w.load(p + "ffn_up_exps.bias", (E, F))
            self.blocks.append(GptOssBlock(
                attn_norm=w.load(p + "attn_norm.weight", (D,)),
                wq=w.load(p + "attn_q.weight", (q_dim, D)), bq=w.load(p + "attn_q.bias", (q_dim,)),
                wk=w.load(p + "attn_k.weight", (kv_dim, D)), bk=w.load(p + "attn_k.bias", (kv_dim,)),
                wv=w.load(p + "attn_v.weight", (kv_dim, D)), bv=w.load(p + "attn_v.bias", (kv_dim,)),
                wo=w.load(p + "attn_output.weight", (D, q_dim)), bo=w.load(p + "attn_output.bias", (D,)),
                sinks=w.load(p + "attn_sinks.weight", (cfg.n_heads,)),
                sliding_window=cfg.sliding_window if cfg.uses_sliding_window(i) else 0,
                ffn_norm=w.load(p + "post_attention_norm.weight", (D,)),
                router=w.load(p + "ffn_gate_inp.weight", (E, D)), router_bias=w.load(p + "ffn_gate_inp.bias", (E,)),
                gate_exps=gate_exps, gate_bias=gate_bias, up_exps=up_exps, up_bias=up_bias,
                down_exps=w.load(p + "ffn_down_exps.weight", (E, D, F)),
                down_bias=w.load(p + "ffn_down_exps.bias", (E, D)),
            ))
        self.output_norm = w.load("output_norm.weight", (D,))
        self.output = w.load("output.weight", (V, D)) if w.has("output.weight") else self.token_embd
        self.tensor_names = sorted(w.loaded)

    def new_cache(self, n_ctx: int):
        cfg = self.config
        return self.backend.new_kv_cache(cfg.n_layers, n_ctx, cfg.n_kv_heads, cfg.head_dim)

    def forward(self, ids, cache, start_pos: int, logits: str = "last"):
        """Logits for tokens `ids` at positions start_pos.. (their K/V go to `cache`): [1, vocab] for the
        last token (logits="last", all that generation needs) or [T, vocab] for every token ("all")."""
        ids = _token_ids(ids)
        forward = self._forward_last if last_row_only(logits, len(ids)) else self._forward
        return self.backend.run_forward(forward, ids, cache, start_pos)

    def _forward_last(self, ids, cache, start_pos: int):
        return self._forward(ids, cache, start_pos, last_only=True)

    def _forward(self, ids, cache, start_pos: int, last_only: bool = False):
        b, eps = self.backend, self.config.norm_eps
        x = b.embedding(self.token_embd, ids)
        for layer, blk in enumerate(self.blocks):
            x = self._attention(blk, b.rmsnorm(x, blk.attn_norm, eps), cache, layer, start_pos, residual=x)
            if last_only and layer == len(self.blocks) - 1:
                x = x[-1:]                # logit_rows.py: the other rows' K/V are in the cache
            x = b.add(x, self._mixture_of_experts(blk, b.rmsnorm(x, blk.ffn_norm, eps)))
        return b.matmul(b.rmsnorm(x, self.output_norm, eps), self.output)

    def _attention(self, blk: GptOssBlock, x, cache, layer: int, start_pos: int, *, residual):
        """residual + Wo · SinkAttention(...) + bo of the normed input x."""
        b, cfg = self.backend, self.config
        T = x.shape[0]
        q, k, v = b.matmuls(x, [blk.wq, blk.wk, blk.wv], [blk.bq, blk.bk, blk.bv])
        q = q.reshape(T, cfg.n_heads, cfg.head_dim)
        k = k.reshape(T, cfg.n_kv_heads, cfg.head_dim)
        v = v.reshape(T, cfg.n_kv_heads, cfg.head_dim)
        # q and k rotated at positions start_pos.. inside attention (rope=): a backend may fuse it
        out = b.attention(q, k, v, cache, layer, start_pos, sliding_window=blk.sliding_window, sinks=blk.sinks,
                          rope=self.rope)
        return b.matmul_add(out, blk.wo, blk.bo, residual=residual)

    def route(self, blk: GptOssBlock, x) -> tuple[np.ndarray, np.ndarray]:
        """Per token: the k experts with the largest router logits, and softmax over those k.

        Returns (experts [T, k] int, weights [T, k] float32), on the host.
        """
        logits = self.backend.to_host(self.backend.matmul(x, blk.router, blk.router_bias)).astype(np.float64)
        return top_k_softmax(logits, self.config.n_experts_per_token)

    def _mixture_of_experts(self, blk: GptOssBlock, x):
        return self.backend.mixture_of_experts(x, blk.router, blk.router_bias, blk.gate_exps, blk.gate_bias,
                                               blk.up_exps, blk.up_bias, blk.down_exps, blk.down_bias,
                                               self.config.n_experts_per_token, limit=self.swiglu_limit,
                                               alpha=self.swiglu_alpha)


def _split_experts(w: WeightLoader, name: str, shape: tuple[int, ...]) -> list:
    """A fused [E, 2F, ...] expert tensor as its [E, F, ...] gate and up halves (copies the bytes:
    each expert's gate rows and up rows are contiguous, but the halves interleave across experts)."""
    from worker.quant import QuantTensor

    tensor = w._stored(name, shape)
    n_experts, rows = shape[0], shape[1]
    raw = np.asarray(tensor.raw).reshape(n_experts, rows, -1)
    half = rows // 2
    return [w.backend.load_weight(QuantTensor(f"{name}[{part}]", tensor.qtype, (n_experts, half, *shape[2:]),
                                              np.ascontiguousarray(raw[:, s : s + half]).reshape(-1)))
            for part, s in (("gate", 0), ("up", half))]
