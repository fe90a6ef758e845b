"""GT-010 LayerNorm variance and normalization: biased variance, eps inside the sqrt, then
scale and shift.

Acceptance: with unit weight and zero bias every row has variance var/(var+eps) (so ~1);
with weight and bias the output equals torch's layer_norm; a constant row (variance 0)
gives exactly the bias, never NaN.
"""
import numpy as np
import pytest

from stories.gpt._layernorm_oracle import inputs, torch_layernorm
from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-010")
@pytest.mark.parametrize("scale", [1e-2, 1.0, 50.0])
def test_unit_variance_and_affine(scale):
    x, w, b = inputs(10, 4, 768, scale=scale)
    ones, zeros = np.ones(768, np.float32), np.zeros(768, np.float32)
    normed = B.layernorm(x, ones, zeros, 1e-5)
    var = x.astype(np.float64).var(axis=-1)
    np.testing.assert_allclose(normed.astype(np.float64).var(axis=-1), var / (var + 1e-5), rtol=1e-4)
    np.testing.assert_allclose(B.layernorm(x, w, b, 1e-5), torch_layernorm(x, w, b, 1e-5), rtol=1e-4, atol=1e-5)


@pytest.mark.story("GT-010")
def test_constant_row_gives_the_bias():
    _, w, b = inputs(11, 1, 64)
    x = np.full((2, 64), 3.25, np.float32)
    ours = B.layernorm(x, w, b, 1e-5)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, torch_layernorm(x, w, b, 1e-5), atol=1e-6)
    np.testing.assert_allclose(ours, np.broadcast_to(b, (2, 64)), atol=1e-6)
