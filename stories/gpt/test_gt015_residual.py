"""GT-015 residual connections in a GPT-2 block: h = x + attn(LN1 x); y = h + mlp(LN2 h).

Acceptance: one block of the tiny GPT-2 built from backend ops (layernorm, attention, gelu FFN,
residual adds) equals transformers' GPT2Block with the same weights; the residual stream's
input is not modified in place.
"""
import numpy as np
import pytest
import torch

from fixtures.tiny_models import tiny_hf_model, tiny_worker_model


@pytest.mark.story("GT-015")
def test_block_with_residuals_matches_transformers_gpt2_block():
    model = tiny_worker_model("gpt2")
    b, cfg, blk = model.backend, model.config, model.blocks[1]
    x = np.random.default_rng(15).standard_normal((7, cfg.hidden_size)).astype(np.float32)
    x_before = x.copy()
    cache = model.new_cache(7)
    h = b.add(x, model._attention(blk, b.layernorm(x, blk.attn_norm, blk.attn_norm_b, cfg.norm_eps), cache, 1, 0))
    y = b.to_host(b.add(h, model._feed_forward(blk, b.layernorm(h, blk.ffn_norm, blk.ffn_norm_b, cfg.norm_eps))))
    np.testing.assert_array_equal(x, x_before)
    causal = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        out = tiny_hf_model("gpt2").transformer.h[1](torch.from_numpy(x)[None], attention_mask=causal)
    ref = (out[0] if isinstance(out, tuple) else out)[0].numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
