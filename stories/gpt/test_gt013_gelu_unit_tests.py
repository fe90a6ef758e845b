"""GT-013 GELU unit tests: generated inputs of many shapes against torch.

Acceptance: for hypothesis-generated arrays (widths to 4096, magnitudes 1e-3..30) the
backend's gelu equals torch.nn.functional.gelu(approximate="tanh").
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-013")
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 9), D=st.sampled_from([1, 3, 768, 3072, 4096]),
       scale=st.sampled_from([1e-3, 1.0, 30.0]))
def test_gelu_matches_torch(seed, T, D, scale):
    x = (np.random.default_rng(seed).standard_normal((T, D)) * scale).astype(np.float32)
    ours = B.gelu(x)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_allclose(ours, torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy(),
                               rtol=1e-5, atol=1e-6)
