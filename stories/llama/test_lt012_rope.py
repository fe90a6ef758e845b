"""LT-012 RoPE: rotary position embedding on the reference backend, checked against transformers.

Acceptance: rotations match transformers' apply_rotary_pos_emb for the NEOX pairing (qwen2,
phi3, gpt-oss), for llama.cpp's NORM pairing on Q/K rows permuted as convert_hf_to_gguf.py
does (llama), with partial rotary dims, linear scaling, and YaRN (frequencies and magnitude
equal transformers' rope init functions, with and without truncation).
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb as phi3_apply_rotary_pos_emb

from fixtures.tiny_models import _permute  # convert_hf_to_gguf.py's LlamaModel.permute
from worker.backend.numpy import NumpyBackend
from worker.config import RopeConfig
from worker.rope import rope_inv_freq

B = NumpyBackend()


def hf_rope(x: np.ndarray, positions: np.ndarray, head_dim: int, base: float, rope_parameters=None, rotary_dim=None):
    """transformers: cos/sin from LlamaRotaryEmbedding, rotation by apply_rotary_pos_emb."""
    params = {"rope_type": "default", "rope_theta": base, **(rope_parameters or {})}
    if rotary_dim is not None:
        params["partial_rotary_factor"] = rotary_dim / head_dim
    if rotary_dim is None:
        config = LlamaConfig(hidden_size=head_dim * x.shape[1], num_attention_heads=x.shape[1],
                             head_dim=head_dim, max_position_embeddings=256, rope_parameters=params)
        rotary = LlamaRotaryEmbedding(config)
    else:   # Phi-3's rotary honours partial_rotary_factor
        config = Phi3Config(hidden_size=head_dim * x.shape[1], num_attention_heads=x.shape[1],
                            max_position_embeddings=256, rope_parameters=params)
        rotary = Phi3RotaryEmbedding(config)
    t = torch.from_numpy(x).transpose(0, 1)[None]                      # [1, H, T, hd]
    cos, sin = rotary(t, torch.from_numpy(positions)[None])
    if rotary_dim is None:
        out, _ = apply_rotary_pos_emb(t, t, cos, sin)
    else:
        out, _ = phi3_apply_rotary_pos_emb(t, t, cos, sin)
    return out[0].transpose(0, 1).numpy()


def float32_angle_tolerance(x, positions):
    """transformers forms angles p * inv_freq in float32: about p * 1.2e-7 rad of rounding, so
    an output may differ by |x| times that from our float64 angles."""
    return 1e-5 + 3e-7 * float(np.max(positions)) * float(np.abs(x).max())


def random_heads(seed, T, H, hd):
    return np.random.default_rng(seed).standard_normal((T, H, hd)).astype(np.float32)


@pytest.mark.story("LT-012")
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 12), H=st.integers(1, 4),
       half=st.sampled_from([2, 4, 16, 32, 64]), start=st.integers(0, 3000),
       base=st.sampled_from([10000.0, 100000.0, 1000000.0]))
def test_neox_rotation_matches_transformers(seed, T, H, half, start, base):
    hd = 2 * half
    x = random_heads(seed, T, H, hd)
    positions = np.arange(start, start + T)
    ours = B.rope(x, positions, RopeConfig(dim=hd, base=base, style="neox"))
    np.testing.assert_allclose(ours, hf_rope(x, positions, hd, base), rtol=0,
                               atol=float32_angle_tolerance(x, positions))


@pytest.mark.story("LT-012")
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 12), H=st.integers(1, 4),
       half=st.sampled_from([2, 8, 32]), start=st.integers(0, 3000))
def test_normal_rotation_on_permuted_rows_matches_transformers(seed, T, H, half, start):
    """llama.cpp's NORM rope on permuted Q/K rows == transformers' rotate-half on HF rows."""
    hd = 2 * half
    x = random_heads(seed, T, H, hd)
    positions = np.arange(start, start + T)
    def permute_heads(a):
        return np.stack([_permute(a[t].reshape(H * hd), H).reshape(H, hd) for t in range(T)])
    ours = B.rope(permute_heads(x), positions, RopeConfig(dim=hd, base=10000.0, style="normal"))
    np.testing.assert_allclose(ours, permute_heads(hf_rope(x, positions, hd, 10000.0)), rtol=0,
                               atol=float32_angle_tolerance(x, positions))


@pytest.mark.story("LT-012")
@pytest.mark.parametrize("rotary_dim, head_dim", [(32, 64), (48, 64), (24, 96)])
def test_partial_rotary_dims_leave_the_rest_unchanged(rotary_dim, head_dim):
    x = random_heads(1, 7, 3, head_dim)
    positions = np.arange(5, 12)
    ours = B.rope(x, positions, RopeConfig(dim=rotary_dim, base=10000.0, style="neox"))
    np.testing.assert_allclose(ours, hf_rope(x, positions, head_dim, 10000.0, rotary_dim=rotary_dim), atol=2e-4)
    np.testing.assert_array_equal(ours[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.story("LT-012")
@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_linear_scaling_matches_transformers(factor):
    x = random_heads(2, 9, 2, 64)
    positions = np.arange(100, 109)
    ours = B.rope(x, positions, RopeConfig(dim=64, base=10000.0, style="neox", scaling="linear", factor=factor))
    ref = hf_rope(x, positions, 64, 10000.0, {"rope_type": "linear", "factor": factor})
    np.testing.assert_allclose(ours, ref, atol=2e-4)


@pytest.mark.story("LT-012")
@pytest.mark.parametrize("truncate", [True, False])
@pytest.mark.parametrize("factor, original, dim, base", [
    (32.0, 4096, 64, 150000.0),     # GPT-OSS-20B
    (4.0, 32768, 128, 1000000.0),   # Qwen2.5 long-context recipe
    (8.0, 2048, 64, 10000.0),
    (2.0, 256, 32, 10000.0),
])
def test_yarn_frequencies_and_magnitude_match_transformers(truncate, factor, original, dim, base):
    config = LlamaConfig(hidden_size=dim * 4, num_attention_heads=4, head_dim=dim,
                         max_position_embeddings=int(original * factor),
                         rope_parameters={"rope_type": "yarn", "rope_theta": base, "factor": factor,
                                          "original_max_position_embeddings": original,
                                          "beta_fast": 32.0, "beta_slow": 1.0, "truncate": truncate})
    hf_inv_freq, hf_magnitude = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    rope = RopeConfig(dim=dim, base=base, style="neox", scaling="yarn", factor=factor, original_context=original)
    inv_freq, magnitude = rope_inv_freq(rope, truncate=truncate)
    np.testing.assert_allclose(inv_freq, hf_inv_freq.double().numpy(), rtol=1e-6)
    assert magnitude == pytest.approx(hf_magnitude, rel=1e-12)


@pytest.mark.story("LT-012")
def test_yarn_rotation_matches_transformers_end_to_end():
    params = {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096,
              "beta_fast": 32.0, "beta_slow": 1.0}
    x = random_heads(3, 6, 2, 64)
    positions = np.array([0, 1, 2, 500, 4095, 20000])
    rope = RopeConfig(dim=64, base=150000.0, style="neox", scaling="yarn", factor=32.0, original_context=4096)
    ours = B.rope(x, positions, rope)
    ref = hf_rope(x, positions, 64, 150000.0, params)
    # transformers computes angles in float32: at position 20000 that is ~2e-3 rad of slack
    np.testing.assert_allclose(ours, ref, atol=5e-3)
    np.testing.assert_allclose(ours[:5], ref[:5], atol=1e-3)


@pytest.mark.story("LT-012")
def test_position_zero_is_the_identity_and_norms_are_kept():
    x = random_heads(4, 5, 3, 64)
    rope = RopeConfig(dim=64, base=10000.0, style="normal")
    np.testing.assert_allclose(B.rope(x, np.zeros(5, int), rope), x, atol=1e-7)
    rotated = B.rope(x, np.arange(1000, 1005), rope)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
