"""GT-011 LayerNorm unit tests: generated shapes, scales and eps against torch.

Acceptance: for hypothesis-generated rows (widths 1..3072, magnitudes 1e-3..1e3, eps 1e-5 and
1e-12) the backend's layernorm equals torch.nn.functional.layer_norm.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stories.gpt._layernorm_oracle import inputs, torch_layernorm
from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-011")
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 9), D=st.sampled_from([2, 3, 64, 768, 1600, 3072]),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), eps=st.sampled_from([1e-5, 1e-12]))
def test_layernorm_matches_torch(seed, T, D, scale, eps):
    x, w, b = inputs(seed, T, D, scale=scale)
    ours = B.layernorm(x, w, b, eps)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_allclose(ours, torch_layernorm(x, w, b, eps), rtol=2e-4, atol=2e-5)
