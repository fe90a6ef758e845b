"""GT-017 MHA attention, prefill: every head has its own K/V (n_kv_heads == n_heads).

Acceptance: equals torch's scaled_dot_product_attention (causal) and transformers' GPT-2
attention block (split of the fused QKV projection, MHA, output projection) of the tiny
fixture's first layer.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.tiny_models import tiny_hf_model, tiny_worker_model
from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


def sdpa(q, k, v):
    def t(x):
        return torch.from_numpy(x).transpose(0, 1)[None]
    out = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True)
    return out[0].transpose(0, 1).reshape(q.shape[0], -1).numpy()


@pytest.mark.story("GT-017")
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 48), H=st.sampled_from([1, 4, 12]), hd=st.sampled_from([32, 64]))
def test_mha_prefill_matches_torch(seed, T, H, hd):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((T, H, hd)).astype(np.float32) for _ in range(3))
    cache = B.new_kv_cache(1, T, H, hd)
    np.testing.assert_allclose(B.attention(q, k, v, cache, 0, 0), sdpa(q, k, v), rtol=1e-4, atol=1e-5)


@pytest.mark.story("GT-017")
def test_fixture_attention_block_matches_transformers_gpt2_attention():
    model = tiny_worker_model("gpt2")
    x = np.random.default_rng(17).standard_normal((9, model.config.hidden_size)).astype(np.float32)
    cache = model.new_cache(9)
    ours = model.backend.to_host(model._attention(model.blocks[0], x, cache, 0, 0))
    causal = torch.full((9, 9), float("-inf")).triu(1)[None, None]     # additive mask, as the model builds
    with torch.no_grad():
        attn = tiny_hf_model("gpt2").transformer.h[0].attn
        ref = attn(torch.from_numpy(x)[None], attention_mask=causal)[0][0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
