"""GT-019 MHA vs GQA validation: one attention op serves both.

Acceptance: GQA with n_kv_heads < n_heads equals MHA run on K/V heads repeated per group
(transformers' repeat_kv), and MHA equals GQA with group size 1; both match torch sdpa.
"""
import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import repeat_kv

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-019")
@pytest.mark.parametrize("H, KV", [(4, 1), (8, 2), (9, 3), (14, 2), (6, 6)])
def test_gqa_equals_mha_on_repeated_kv(H, KV):
    T, hd = 13, 64
    rng = np.random.default_rng(H * 10 + KV)
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k = rng.standard_normal((T, KV, hd)).astype(np.float32)
    v = rng.standard_normal((T, KV, hd)).astype(np.float32)
    def repeat(x):
        return repeat_kv(torch.from_numpy(x).transpose(0, 1)[None], H // KV)[0].transpose(0, 1).contiguous().numpy()
    gqa = B.attention(q, k, v, B.new_kv_cache(1, T, KV, hd), 0, 0)
    mha = B.attention(q, repeat(k), repeat(v), B.new_kv_cache(1, T, H, hd), 0, 0)
    np.testing.assert_allclose(gqa, mha, rtol=1e-6, atol=1e-6)
    ref = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q).transpose(0, 1)[None], torch.from_numpy(k).transpose(0, 1)[None],
        torch.from_numpy(v).transpose(0, 1)[None], is_causal=True, enable_gqa=True)
    np.testing.assert_allclose(gqa, ref[0].transpose(0, 1).reshape(T, -1).numpy(), rtol=1e-4, atol=1e-5)
