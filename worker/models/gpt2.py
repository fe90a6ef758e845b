"""GPT-2 family: LayerNorm, GELU (tanh), learned absolute positions, fused QKV with bias, MHA.

    x = E_token[ids] + E_pos[positions]
    per block:  h = x + Wo · MHA(split(Wqkv · LN(x) + bqkv)) + bo
                y = h + Wdown · gelu(Wup · LN(h) + bup) + bdown
    logits = Wout · LN(y)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.errors import PromptTooLongError
from worker.models.llama import _token_ids
from worker.models.logit_rows import last_row_only
from worker.models.weights import WeightLoader


@dataclass
class GPT2Block:
    attn_norm: object
    attn_norm_b: object
    wq: object
    wk: object
    wv: object
    bq: object
    bk: object
    bv: object
    wo: object
    bo: object
    ffn_norm: object
    ffn_norm_b: object
    w_up: object
    b_up: object
    w_down: object
    b_down: object


class GPT2Model:

    def __init__(self, gguf_file, backend, progress=None):
        cfg = self.config = gguf_file.config
        self.backend = backend
        w = WeightLoader(gguf_file, backend, progress)
        D, V, F = cfg.hidden_size, cfg.vocab_size, cfg.ffn_size

        self.token_embd = w.load("token_embd.weight", (V, D))
        self.position_embd = w.load("position_embd.weight", (cfg.context_length, D))
        self.blocks = []
        for i in range(cfg.n_layers):
            p = f"blk.{i}."
            wq, wk, wv = w.split_rows(p + "attn_qkv.weight", (3 * D, D), [D, D, D])
            bq, bk, bv = w.split_rows(p + "attn_qkv.bias", (3 * D,), [D, D, D])
            self.blocks.append(GPT2Block(
                attn_norm=w.load(p + "attn_norm.weight", (D,)), attn_norm_b=w.load(p + "attn_norm.bias", (D,)),
                wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv,
                wo=w.load(p + "attn_output.weight", (D, D)), bo=w.load(p + "attn_output.bias", (D,)),
                ffn_norm=w.load(p + "ffn_norm.weight", (D,)), ffn_norm_b=w.load(p + "ffn_norm.bias", (D,)),
                w_up=w.load(p + "ffn_up.weight", (F, D)), b_up=w.load(p + "ffn_up.bias", (F,)),
                w_down=w.load(p + "ffn_down.weight", (D, F)), b_down=w.load(p + "ffn_down.bias", (D,)),
            ))
        self.output_norm = w.load("output_norm.weight", (D,))
        self.output_norm_b = w.load("output_norm.bias", (D,))
        self.output = w.load("output.weight", (V, D)) if w.has("output.weight") else self.token_embd
        self.tensor_names = sorted(w.loaded)      # every file tensor this adapter consumed

    def new_cache(self, n_ctx: int):
        cfg = self.config
        if n_ctx > cfg.context_length:
            raise PromptTooLongError(
                f"n_ctx {n_ctx} exceeds the {cfg.context_length} learned positions of this model", field="n_ctx")
        return self.backend.new_kv_cache(cfg.n_layers, n_ctx, cfg.n_heads, cfg.head_dim)

    def forward(self, ids, cache, start_pos: int, logits: str = "last"):
        """Logits for tokens `ids` at positions start_pos.. (their K/V go to `cache`): [1, vocab] for the
        last token (logits="last", all that generation needs) or [T, vocab] for every token ("all")."""
        ids = _token_ids(ids)
        last = start_pos + len(ids) - 1
        if last >= self.config.context_length:
            raise PromptTooLongError(
                f"position {last} is beyond the {self.config.context_length} learned positions", field="n_ctx")
        forward = self._forward_last if last_row_only(logits, len(ids)) else self._forward
        return self.backend.run_forward(forward, ids, cache, start_pos)

    def _forward_last(self, ids, cache, start_pos: int):
        return self._forward(ids, cache, start_pos, last_only=True)

    def _forward(self, ids, cache, start_pos: int, last_only: bool = False):
        b, cfg = self.backend, self.config
        positions = np.arange(start_pos, start_pos + len(ids))
        x = b.add(b.embedding(self.token_embd, ids), b.embedding(self.position_embd, positions))
        for layer, blk in enumerate(self.blocks):
            normed = b.layernorm(x, blk.attn_norm, blk.attn_norm_b, cfg.norm_eps)
            x = self._attention(blk, normed, cache, layer, start_pos, residual=x)
            if last_only and layer == len(self.blocks) - 1:
                x = x[-1:]                # logit_rows.py: the other rows' K/V are in the cache
            x = self._feed_forward(blk, b.layernorm(x, blk.ffn_norm, blk.ffn_norm_b, cfg.norm_eps), residual=x)
        return b.matmul(b.layernorm(x, self.output_norm, self.output_norm_b, cfg.norm_eps), self.output)

    def _attention(self, blk: GPT2Block, x, cache, layer: int, start_pos: int, *, residual=None):
        """(residual +) Wo · MHA(...) + bo of the normed input x."""
        b, cfg = self.backend, self.config
        T = x.shape[0]
        q, k, v = (y.reshape(T, cfg.n_heads, cfg.head_dim)
                   for y in b.matmuls(x, [blk.wq, blk.wk, blk.wv], [blk.bq, blk.bk, blk.bv]))
        return _output(b, b.attention(q, k, v, cache, layer, start_pos), blk.wo, blk.bo, residual)

    def _feed_forward(self, blk: GPT2Block, x, *, residual=None):
        """(residual +) Wdown · gelu(Wup · x + bup) + bdown."""
        b = self.backend
        return _output(b, b.gelu(b.matmul(x, blk.w_up, blk.b_up)), blk.w_down, blk.b_down, residual)


def _output(b, h, w, bias, residual):
    """A sublayer's output product, with the residual stream added in the same op when given."""
    return b.matmul(h, w, bias) if residual is None else b.matmul_add(h, w, bias, residual=residual)
