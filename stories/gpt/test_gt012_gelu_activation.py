"""GT-012 GELU activation: the tanh approximation GPT-2 uses.

Acceptance: equals torch's gelu(approximate="tanh") and transformers' NewGELUActivation (GPT-2's
"gelu_new") on a dense grid over [-20, 20] and at extremes; differs from exact GELU by the
known approximation gap (so the variant is really the tanh one).
"""
import numpy as np
import pytest
import torch
from transformers.activations import NewGELUActivation

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-012")
def test_gelu_is_the_tanh_approximation():
    x = np.linspace(-20, 20, 40001, dtype=np.float32).reshape(1, -1)
    ours = B.gelu(x)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(ours, torch.nn.functional.gelu(t, approximate="tanh").numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours, NewGELUActivation()(t).numpy(), rtol=1e-5, atol=1e-6)
    gap = np.abs(ours - torch.nn.functional.gelu(t).numpy()).max()
    assert 1e-4 < gap < 1e-2, f"distance to exact GELU {gap} is not the tanh approximation's"


@pytest.mark.story("GT-012")
def test_gelu_extremes():
    x = np.array([[-1e4, -30.0, -0.0, 0.0, 30.0, 1e4]], np.float32)
    ours = B.gelu(x)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy(),
                               rtol=1e-6, atol=1e-30)
    assert ours[0, -1] == np.float32(1e4) and abs(ours[0, 0]) == 0.0
