"""LT-017 SwiGLU FFN: silu(gate) * up, and the FFN down(silu(gate x) * up x).

Acceptance: the activation equals torch's silu(g) * u on generated and extreme inputs; the FFN
built from backend ops equals transformers' LlamaMLP with the same weights; GPT-OSS's clamped
variant equals transformers' GptOssExperts gate.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts
from transformers.models.llama.modeling_llama import LlamaMLP

from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("LT-017")
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 9), F_=st.sampled_from([8, 1536, 4864]),
       scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_swiglu_matches_torch(seed, T, F_, scale):
    rng = np.random.default_rng(seed)
    g = (rng.standard_normal((T, F_)) * scale).astype(np.float32)
    u = rng.standard_normal((T, F_)).astype(np.float32)
    ref = (F.silu(torch.from_numpy(g)) * torch.from_numpy(u)).numpy()
    np.testing.assert_allclose(B.swiglu(g, u), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.story("LT-017")
def test_swiglu_extremes_stay_finite():
    g = np.array([[-1e4, -100.0, -0.0, 0.0, 100.0, 1e4]], np.float32)
    u = np.ones_like(g)
    ours = B.swiglu(g, u)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, (F.silu(torch.from_numpy(g)) * torch.from_numpy(u)).numpy(), rtol=1e-6)


@pytest.mark.story("LT-017")
@pytest.mark.parametrize("hidden, ffn", [(64, 128), (576, 1536)])
def test_ffn_matches_transformers_llama_mlp(hidden, ffn):
    torch.manual_seed(hidden)
    mlp = LlamaMLP(LlamaConfig(hidden_size=hidden, intermediate_size=ffn)).eval()
    x = np.random.default_rng(1).standard_normal((5, hidden)).astype(np.float32)
    w = {n: p.detach().numpy() for n, p in mlp.named_parameters()}
    ours = B.matmul(B.swiglu(B.matmul(x, w["gate_proj.weight"]), B.matmul(x, w["up_proj.weight"])),
                    w["down_proj.weight"])
    with torch.no_grad():
        ref = mlp(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.story("LT-017")
@pytest.mark.parametrize("limit, alpha", [(7.0, 1.702), (1.0, 1.702), (7.0, 1.0)])
def test_gpt_oss_clamped_swiglu_matches_transformers(limit, alpha):
    rng = np.random.default_rng(2)
    g = (rng.standard_normal((6, 64)) * 6).astype(np.float32)
    u = (rng.standard_normal((6, 64)) * 6).astype(np.float32)
    interleaved = np.empty((6, 128), np.float32)     # GptOssExperts reads gate/up interleaved
    interleaved[:, ::2], interleaved[:, 1::2] = g, u
    ref = GptOssExperts._apply_gate(SimpleNamespace(limit=limit, alpha=alpha), torch.from_numpy(interleaved))
    np.testing.assert_allclose(B.swiglu(g, u, limit=limit, alpha=alpha), ref.numpy(), rtol=1e-5, atol=1e-6)
