"""GT-009 LayerNorm mean reduction: the mean is removed exactly, whatever the offset.

Acceptance: with unit weight and zero bias the output of every row has mean 0 (to float32
precision) and equals torch's layer_norm, including rows with a large common offset.
"""
import numpy as np
import pytest

from stories.gpt._layernorm_oracle import inputs, torch_layernorm
from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-009")
@pytest.mark.parametrize("offset", [0.0, 5.0, -300.0, 1e4])
@pytest.mark.parametrize("D", [8, 768, 1024])
def test_rows_are_centred(offset, D):
    x, _, _ = inputs(9, 5, D, scale=1.0, offset=offset)
    ones, zeros = np.ones(D, np.float32), np.zeros(D, np.float32)
    ours = B.layernorm(x, ones, zeros, 1e-5)
    np.testing.assert_allclose(ours.mean(axis=-1), 0.0, atol=1e-5)
    tolerance = 1e-4 if abs(offset) < 1e3 else 2e-2   # torch rounds x - mean in float32
    np.testing.assert_allclose(ours, torch_layernorm(x, ones, zeros, 1e-5), atol=tolerance)
