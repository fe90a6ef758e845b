"""LT-013 RMSNorm: x / sqrt(mean(x^2) + eps) * weight, checked against transformers' LlamaRMSNorm.

Acceptance: matches LlamaRMSNorm (float32) on generated inputs of many widths and on hard
cases (huge and tiny magnitudes, an all-zero row, a single spike); never NaN.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


def hf_rmsnorm(x, weight, eps):
    norm = LlamaRMSNorm(x.shape[-1], eps=eps)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(weight))
        return norm(torch.from_numpy(x)).numpy()


@pytest.mark.story("LT-013")
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 9), D=st.sampled_from([1, 7, 64, 576, 896, 3072]),
       eps=st.sampled_from([1e-5, 1e-6]), scale=st.sampled_from([1e-3, 1.0, 300.0]))
def test_rmsnorm_matches_transformers(seed, T, D, eps, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, D)) * scale).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(D)).astype(np.float32)
    np.testing.assert_allclose(B.rmsnorm(x, w, eps), hf_rmsnorm(x, w, eps), rtol=2e-5, atol=1e-6)


@pytest.mark.story("LT-013")
@pytest.mark.parametrize("case", ["zeros", "spike", "huge", "tiny"])
def test_rmsnorm_hard_cases(case):
    D = 576
    x = np.zeros((1, D), np.float32)
    if case == "spike":
        x[0, 17] = 1000.0
    elif case == "huge":
        x[:] = np.linspace(-3e4, 3e4, D, dtype=np.float32)
    elif case == "tiny":
        x[:] = np.linspace(-1e-4, 1e-4, D, dtype=np.float32)
    w = np.linspace(0.5, 1.5, D, dtype=np.float32)
    ours = B.rmsnorm(x, w, 1e-5)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, hf_rmsnorm(x, w, 1e-5), rtol=2e-5, atol=1e-6)
