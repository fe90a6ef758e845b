"""LT-016 GQA attention, decode: one new token attends over everything in the KV cache.

Acceptance: after a prefill of P tokens, each one-token decode step equals the last row of
torch's causal GQA attention over the whole sequence; chunked prefill equals one-shot prefill.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


def full_sdpa(q, k, v):
    def t(x):
        return torch.from_numpy(x).transpose(0, 1)[None]
    out = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True, enable_gqa=True)
    return out[0].transpose(0, 1).reshape(q.shape[0], -1).numpy()


@pytest.mark.story("LT-016")
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), P=st.integers(1, 30), steps=st.integers(1, 6), KV=st.integers(1, 3),
       group=st.sampled_from([1, 3, 4]), hd=st.sampled_from([32, 64]))
def test_decode_steps_match_full_attention(seed, P, steps, KV, group, hd):
    H, T = KV * group, P + steps
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k = rng.standard_normal((T, KV, hd)).astype(np.float32)
    v = rng.standard_normal((T, KV, hd)).astype(np.float32)
    reference = full_sdpa(q, k, v)
    cache = B.new_kv_cache(2, T + 5, KV, hd)
    B.attention(q[:P], k[:P], v[:P], cache, 1, 0)
    for pos in range(P, T):
        out = B.attention(q[pos:pos + 1], k[pos:pos + 1], v[pos:pos + 1], cache, 1, pos)
        assert out.shape == (1, H * hd)
        np.testing.assert_allclose(out[0], reference[pos], rtol=1e-4, atol=1e-5)
    assert not cache.k[0].any(), "another layer's cache was written"


@pytest.mark.story("LT-016")
def test_chunked_prefill_equals_one_shot():
    T, H, KV, hd = 23, 6, 2, 64
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((T, h, hd)).astype(np.float32) for h in (H, KV, KV))
    cache = B.new_kv_cache(1, T, KV, hd)
    chunks = [B.attention(q[a:b], k[a:b], v[a:b], cache, 0, a) for a, b in [(0, 5), (5, 6), (6, 23)]]
    np.testing.assert_allclose(np.concatenate(chunks), full_sdpa(q, k, v), rtol=1e-4, atol=1e-5)
