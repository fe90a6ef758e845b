"""GT-020 MHA unit tests: edge cases of causal attention.

Acceptance: a single token attends only to itself (output = its V); the first query of a
prefill ignores later keys (changing them changes nothing); large score magnitudes stay finite
and equal torch; the cache keeps earlier positions intact when later ones are written.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-020")
def test_single_token_returns_its_value():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 4, 16)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(B.attention(q, k, v, B.new_kv_cache(1, 1, 4, 16), 0, 0), v.reshape(1, -1), rtol=1e-6)


@pytest.mark.story("GT-020")
def test_future_keys_do_not_leak():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((6, 2, 16)).astype(np.float32) for _ in range(3))
    first = B.attention(q, k, v, B.new_kv_cache(1, 6, 2, 16), 0, 0)
    k2, v2 = k.copy(), v.copy()
    k2[3:] += 100.0
    v2[3:] -= 50.0
    second = B.attention(q, k2, v2, B.new_kv_cache(1, 6, 2, 16), 0, 0)
    np.testing.assert_array_equal(first[:3], second[:3])


@pytest.mark.story("GT-020")
def test_large_scores_stay_finite_and_match_torch():
    rng = np.random.default_rng(2)
    q = (rng.standard_normal((8, 2, 64)) * 40).astype(np.float32)
    k = (rng.standard_normal((8, 2, 64)) * 40).astype(np.float32)
    v = rng.standard_normal((8, 2, 64)).astype(np.float32)
    ours = B.attention(q, k, v, B.new_kv_cache(1, 8, 2, 64), 0, 0)
    assert np.isfinite(ours).all()
    def t(x):
        return torch.from_numpy(x).transpose(0, 1)[None].double()
    ref = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True)[0].transpose(0, 1).reshape(8, -1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.story("GT-020")
def test_cache_keeps_earlier_positions():
    rng = np.random.default_rng(3)
    k, v = (rng.standard_normal((5, 2, 8)).astype(np.float32) for _ in range(2))
    cache = B.new_kv_cache(1, 5, 2, 8)
    B.attention(k[:3], k[:3], v[:3], cache, 0, 0)
    B.attention(k[3:], k[3:], v[3:], cache, 0, 3)
    np.testing.assert_array_equal(cache.k[0], k)
    np.testing.assert_array_equal(cache.v[0], v)
