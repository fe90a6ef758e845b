"""LT-015 GQA attention, prefill: causal attention of T new tokens over the KV cache.

Acceptance: equals torch's scaled_dot_product_attention (is_causal, enable_gqa) for query/KV
head ratios 1..8 and many lengths; stores K and V in the cache at their positions; a sliding
window matches transformers' sliding-window causal mask; attention sinks match transformers'
GPT-OSS eager attention.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as gpt_oss_attention

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


def qkv(seed, T, H, KV, hd):
    rng = np.random.default_rng(seed)
    def f(h):
        return (rng.standard_normal((T, h, hd)) * 1.5).astype(np.float32)
    return f(H), f(KV), f(KV)


def heads_first(x):                       # [T, H, hd] -> [1, H, T, hd]
    return torch.from_numpy(x).transpose(0, 1)[None]


def hf_mask(mask_function, T: int) -> torch.Tensor:
    """[T, T] boolean mask from one of transformers' mask functions (True = may attend)."""
    zero = torch.tensor(0)
    return mask_function(zero, zero, torch.arange(T)[:, None], torch.arange(T)[None, :]).expand(T, T)


def sdpa(q, k, v, mask=None, scale=None):
    out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), attn_mask=mask,
                                         is_causal=mask is None, enable_gqa=True, scale=scale)
    return out[0].transpose(0, 1).reshape(q.shape[0], -1).numpy()


@pytest.mark.story("LT-015")
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 40), KV=st.integers(1, 4), group=st.sampled_from([1, 2, 3, 7, 8]),
       hd=st.sampled_from([16, 64, 128]))
def test_gqa_prefill_matches_torch_sdpa(seed, T, KV, group, hd):
    H = KV * group
    q, k, v = qkv(seed, T, H, KV, hd)
    cache = B.new_kv_cache(1, T + 3, KV, hd)
    out = B.attention(q, k, v, cache, 0, 0)
    assert out.shape == (T, H * hd)
    np.testing.assert_allclose(out, sdpa(q, k, v), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cache.k[0][:T], k)
    np.testing.assert_array_equal(cache.v[0][:T], v)
    B.free_kv_cache(cache)


@pytest.mark.story("LT-015")
def test_custom_scale_is_used():
    q, k, v = qkv(5, 9, 4, 2, 32)
    cache = B.new_kv_cache(1, 9, 2, 32)
    np.testing.assert_allclose(B.attention(q, k, v, cache, 0, 0, scale=0.05), sdpa(q, k, v, scale=0.05),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.story("LT-015")
@pytest.mark.parametrize("window", [1, 3, 8, 128])
def test_sliding_window_matches_transformers_mask(window):
    T, H, KV, hd = 20, 4, 2, 32
    q, k, v = qkv(window, T, H, KV, hd)
    mask = hf_mask(sliding_window_causal_mask_function(window), T)
    cache = B.new_kv_cache(1, T, KV, hd)
    np.testing.assert_allclose(B.attention(q, k, v, cache, 0, 0, sliding_window=window), sdpa(q, k, v, mask=mask),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.story("LT-015")
@pytest.mark.parametrize("window", [0, 4])
def test_attention_sinks_match_transformers_gpt_oss(window):
    T, H, KV, hd = 11, 8, 2, 64
    q, k, v = qkv(7, T, H, KV, hd)
    sinks = np.random.default_rng(8).standard_normal(H).astype(np.float32) * 2
    allowed = hf_mask(sliding_window_causal_mask_function(window) if window else causal_mask_function, T)
    additive = torch.zeros(T, T).masked_fill(~allowed, -math.inf)
    module = SimpleNamespace(num_key_value_groups=H // KV, sinks=torch.from_numpy(sinks), training=False)
    ref, _ = gpt_oss_attention(module, heads_first(q), heads_first(k), heads_first(v), additive[None, None],
                               scaling=1 / math.sqrt(hd))
    cache = B.new_kv_cache(1, T, KV, hd)
    ours = B.attention(q, k, v, cache, 0, 0, sliding_window=window, sinks=sinks)
    np.testing.assert_allclose(ours, ref[0].reshape(T, -1).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.story("LT-015")
def test_prefill_beyond_the_cache_is_refused():
    from worker.errors import PromptTooLongError

    q, k, v = qkv(0, 6, 2, 1, 16)
    cache = B.new_kv_cache(1, 5, 1, 16)
    with pytest.raises(PromptTooLongError, match="5 positions"):
        B.attention(q, k, v, cache, 0, 0)
