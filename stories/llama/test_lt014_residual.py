"""LT-014 residual connection: out = x + sublayer(x), elementwise, bit-exact float32 addition.

Acceptance: the backend's add equals torch's float32 addition exactly on generated shapes, and
leaves its inputs untouched (the residual stream is read again by the next block).
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("LT-014", "GT-015")
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 17), D=st.sampled_from([1, 64, 576, 896, 2880]))
def test_residual_add_is_exact_float32_addition(seed, T, D):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((T, D)) * 10).astype(np.float32)
    b = (rng.standard_normal((T, D)) * 1e-3).astype(np.float32)
    a_before, b_before = a.copy(), b.copy()
    out = B.add(a, b)
    assert out.dtype == np.float32 and out.shape == (T, D)
    np.testing.assert_array_equal(out, (torch.from_numpy(a) + torch.from_numpy(b)).numpy())
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)


@pytest.mark.story("LT-014", "GT-015")
@pytest.mark.filterwarnings("ignore:overflow")
def test_residual_add_keeps_special_values():
    a = np.array([[np.float32(3e38), -0.0, 1.0, np.inf]], np.float32)
    b = np.array([[np.float32(3e38), 0.0, -1.0, 1.0]], np.float32)
    np.testing.assert_array_equal(B.add(a, b), (torch.from_numpy(a) + torch.from_numpy(b)).numpy())
