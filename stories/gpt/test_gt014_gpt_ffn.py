"""GT-014 GPT FFN: down(gelu(up x + b_up)) + b_down, checked against transformers' GPT2MLP.

Acceptance: the FFN built from backend ops (matmul with bias, GELU tanh) equals GPT2MLP with the
same weights (transformers' Conv1D stores them transposed: [in, out]); also with the tiny
GPT-2 fixture's first block as stored in its GGUF.
"""
import numpy as np
import pytest
import torch
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

from fixtures.tiny_models import tiny_hf_model, tiny_worker_model
from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-014")
@pytest.mark.parametrize("hidden", [64, 768])
def test_ffn_matches_gpt2_mlp(hidden):
    torch.manual_seed(hidden)
    mlp = GPT2MLP(4 * hidden, GPT2Config(n_embd=hidden, activation_function="gelu_new", resid_pdrop=0.0)).eval()
    with torch.no_grad():
        for p in mlp.parameters():   # Conv1D weights are [in, out]: fan-in scaling keeps outputs O(1)
            p.normal_(0, 0.1 if p.ndim == 1 else 1.5 / p.shape[0] ** 0.5)
    x = np.random.default_rng(0).standard_normal((7, hidden)).astype(np.float32)
    p = {n: t.detach().numpy() for n, t in mlp.named_parameters()}
    ours = B.matmul(B.gelu(B.matmul(x, p["c_fc.weight"].T, p["c_fc.bias"])), p["c_proj.weight"].T, p["c_proj.bias"])
    with torch.no_grad():
        ref = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.story("GT-014")
def test_fixture_block_ffn_matches_transformers():
    model = tiny_worker_model("gpt2")
    block = model.blocks[0]
    x = np.random.default_rng(1).standard_normal((5, model.config.hidden_size)).astype(np.float32)
    ours = model.backend.to_host(model._feed_forward(block, x))
    with torch.no_grad():
        ref = tiny_hf_model("gpt2").transformer.h[0].mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
