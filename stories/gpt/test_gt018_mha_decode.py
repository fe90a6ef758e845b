"""GT-018 MHA attention, decode: one token at a time over the cached keys and values.

Acceptance: after prefill, each decode step equals the matching row of torch's causal MHA over
the whole sequence; the tiny GPT-2's decode logits equal transformers' logits of the full
sequence.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fixtures.hf_reference import hf_logits, relative_logit_error
from fixtures.tiny_models import tiny_hf_model, tiny_worker_model
from worker.backend.numpy import NumpyBackend

B = NumpyBackend()


@pytest.mark.story("GT-018")
@pytest.mark.parametrize("P, steps, H, hd", [(1, 5, 4, 64), (10, 3, 12, 64), (31, 2, 1, 32)])
def test_mha_decode_matches_full_attention(P, steps, H, hd):
    T = P + steps
    rng = np.random.default_rng(P)
    q, k, v = (rng.standard_normal((T, H, hd)).astype(np.float32) for _ in range(3))
    def t(x):
        return torch.from_numpy(x).transpose(0, 1)[None]
    reference = F.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True)[0]
    reference = reference.transpose(0, 1).reshape(T, -1).numpy()
    cache = B.new_kv_cache(1, T, H, hd)
    B.attention(q[:P], k[:P], v[:P], cache, 0, 0)
    for pos in range(P, T):
        out = B.attention(q[pos:pos + 1], k[pos:pos + 1], v[pos:pos + 1], cache, 0, pos)
        np.testing.assert_allclose(out[0], reference[pos], rtol=1e-4, atol=1e-5)


@pytest.mark.story("GT-018")
def test_gpt2_decode_logits_match_transformers():
    model = tiny_worker_model("gpt2")
    ids = np.random.default_rng(18).integers(0, 49152, 10)
    reference = hf_logits(tiny_hf_model("gpt2"), ids)
    cache = model.new_cache(10)
    model.forward(ids[:6], cache, 0)
    for pos in range(6, 10):
        step = model.backend.to_host(model.forward(ids[pos:pos + 1], cache, pos))
        assert relative_logit_error(step, reference[pos:pos + 1]) < 1e-4
