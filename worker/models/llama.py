"""Llama family: llama (SmolLM2), qwen2 (QKV bias), phi3 (fused QKV and gate/up tensors).

Per block, pre-norm residual:
    h = x + Wo · Attention(rope(Wq·n + bq), rope(Wk·n + bk), Wv·n + bv),  n = RMSNorm(x)
    y = h + Wdown · (silu(Wgate·m) * (Wup·m)),                             m = RMSNorm(h)
logits = Wout · RMSNorm(y)   (Wout = token embedding when the file has no output.weight)

llama.cpp stores llama's Q/K rows permuted for the NORM rope style (adjacent pairs); qwen2 and
phi3 use NEOX (halves). The rope style comes with the config, so the model is the same for all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.errors import InvalidParamsError, UnsupportedModelError
from worker.models.logit_rows import last_row_only
from worker.models.weights import WeightLoader


@dataclass
class LlamaBlock:
    attn_norm: object
    wq: object
    wk: object
    wv: object
    bq: object | None
    bk: object | None
    bv: object | None
    wo: object
    ffn_norm: object
    w_gate: object
    w_up: object
    w_down: object


class LlamaModel:

    def __init__(self, gguf_file, backend, progress=None):
        cfg = self.config = gguf_file.config
        self.backend = backend
        if cfg.rope is None:
            raise UnsupportedModelError(f"{cfg.architecture} config has no rope settings")
        for name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"):
            if name in gguf_file.tensors:
                raise UnsupportedModelError(f"per-dimension rope frequency factors ({name}) are not supported")
        w = WeightLoader(gguf_file, backend, progress)
        D, V, F = cfg.hidden_size, cfg.vocab_size, cfg.ffn_size
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim

        self.token_embd = w.load("token_embd.weight", (V, D))
        self.blocks = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            if w.has(p + "attn_qkv.weight"):     # phi3: one fused projection
                wq, wk, wv = w.split_rows(p + "attn_qkv.weight", (q_dim + 2 * kv_dim, D), [q_dim, kv_dim, kv_dim])
                bq = bk = bv = None
                if w.has(p + "attn_qkv.bias"):
                    bq, bk, bv = w.split_rows(p + "attn_qkv.bias", (q_dim + 2 * kv_dim,), [q_dim, kv_dim, kv_dim])
            else:
                wq = w.load(p + "attn_q.weight", (q_dim, D))
                wk = w.load(p + "attn_k.weight", (kv_dim, D))
                wv = w.load(p + "attn_v.weight", (kv_dim, D))
                bq = w.optional(p + "attn_q.bias", (q_dim,))        # qwen2
                bk = w.optional(p + "attn_k.bias", (kv_dim,))
                bv = w.optional(p + "attn_v.bias", (kv_dim,))
            if w.has(p + "ffn_gate.weight"):
                w_gate = w.load(p + "ffn_gate.weight", (F, D))
                w_up = w.load(p + "ffn_up.weight", (F, D))
            else:                                 # phi3: ffn_up holds [gate; up]
                w_gate, w_up = w.split_rows(p + "ffn_up.weight", (2 * F, D), [F, F])
            self.blocks.append(LlamaBlock(
                attn_norm=w.load(p + "attn_norm.weight", (D,)),
                wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv,
                wo=w.load(p + "attn_output.weight", (D, q_dim)),
                ffn_norm=w.load(p + "ffn_norm.weight", (D,)),
                w_gate=w_gate, w_up=w_up,
                w_down=w.load(p + "ffn_down.weight", (D, F)),
            ))
        self.output_norm = w.load("output_norm.weight", (D,))
        self.output = w.load("output.weight", (V, D)) if w.has("output.weight") else self.token_embd
        self.tensor_names = sorted(w.loaded)      # every file tensor this adapter consumed

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
        b, cfg = self.backend, self.config
        x = b.embedding(self.token_embd, ids)
        for layer, blk in enumerate(self.blocks):
            normed = b.rmsnorm(x, blk.attn_norm, cfg.norm_eps)
            x = self._attention(blk, normed, cache, layer, start_pos, residual=x)
            if last_only and layer == len(self.blocks) - 1:
                x = x[-1:]                # logit_rows.py: the other rows' K/V are in the cache
            x = self._feed_forward(blk, b.rmsnorm(x, blk.ffn_norm, cfg.norm_eps), residual=x)
        return b.matmul(b.rmsnorm(x, self.output_norm, cfg.norm_eps), self.output)

    def _attention(self, blk: LlamaBlock, x, cache, layer: int, start_pos: int, *, residual):
        """residual + Wo · Attention(...) of the normed input x."""
        b, cfg = self.backend, self.config
        T = x.shape[0]
        q, k, v = b.matmuls(x, [blk.wq, blk.wk, blk.wv], [blk.bq, blk.bk, blk.bv])
        q = q.reshape(T, cfg.n_heads, cfg.head_dim)
        k = k.reshape(T, cfg.n_kv_heads, cfg.head_dim)
        v = v.reshape(T, cfg.n_kv_heads, cfg.head_dim)
        # q and k rotated at positions start_pos.. inside attention (rope=): a backend may fuse it
        out = b.attention(q, k, v, cache, layer, start_pos, sliding_window=cfg.sliding_window, rope=cfg.rope)
        return b.matmul_add(out, blk.wo, residual=residual)

    def _feed_forward(self, blk: LlamaBlock, x, *, residual):
        """residual + Wdown · SwiGLU(Wgate·x, Wup·x)."""
        b = self.backend
        return b.matmul_add(b.matmul_swiglu(x, blk.w_gate, blk.w_up), blk.w_down, residual=residual)


def _token_ids(ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise InvalidParamsError(
            f"forward needs a non-empty 1-D array of integer token ids, got {ids.dtype} {ids.shape}", field="ids")
    return ids.astype(np.int64)
