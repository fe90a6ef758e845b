"""GT-036 MXFP4 FFN projections: the GPT-OSS mixture-of-experts feed-forward of the tiny fixture,
whose gate/up/down expert projections are MXFP4 in the GGUF file, gives the output of
transformers' GptOssMLP (router + experts, eager) holding the gguf-py-dequantized experts, in
every layer, for prefill-sized and single-token inputs; the routing (top-k of the router
logits, softmax over the chosen k) picks the same experts with the same weights.

Metric: ||ours - transformers||_F / ||transformers||_F; threshold 1e-5.
Against the unquantized float experts (Gaussian, rounded by gguf-py) the format's rounding shows:
recorded per layer (~10 %); asserted < 50 % as a sanity bound only.
"""
import numpy as np
import pytest
import torch

from fixtures.tiny_gpt_oss import LAYERS, tiny_gpt_oss_hf
from stories.gpt._mxfp4_helpers import MXFP4, record, relative_error, tiny_worker_gpt_oss

pytestmark = pytest.mark.story("GT-036")
X = np.random.default_rng(36).standard_normal((16, 64)).astype(np.float32)


def transformers_mlp(layer: int, x: np.ndarray, experts: str = "mxfp4") -> np.ndarray:
    mlp = tiny_gpt_oss_hf(experts).model.layers[layer].mlp
    with torch.no_grad():
        out, _ = mlp(torch.from_numpy(x)[None])
    return out[0].double().numpy()


def test_expert_weights_are_mxfp4_in_the_model():
    model = tiny_worker_gpt_oss()
    for blk in model.blocks:
        for w in (blk.gate_exps, blk.up_exps, blk.down_exps):
            assert w.tensor.qtype == MXFP4 and len(w.shape) == 3


@pytest.mark.parametrize("layer", range(LAYERS))
@pytest.mark.parametrize("tokens", [16, 1], ids=["prefill", "decode"])
def test_moe_output_equals_transformers(layer, tokens):
    model = tiny_worker_gpt_oss()
    x = X[:tokens]
    ours = model.backend.to_host(model._mixture_of_experts(model.blocks[layer], model.backend.asarray(x)))
    error = relative_error(ours, transformers_mlp(layer, x))
    assert error < 1e-5, f"layer {layer}: relative error {error:.2e}"


@pytest.mark.parametrize("layer", range(LAYERS))
def test_routing_matches_transformers_router(layer):
    model = tiny_worker_gpt_oss()
    experts, weights = model.route(model.blocks[layer], model.backend.asarray(X))
    with torch.no_grad():
        _, scores, indices = tiny_gpt_oss_hf().model.layers[layer].mlp.router(torch.from_numpy(X))
    np.testing.assert_array_equal(experts, indices.numpy())
    np.testing.assert_allclose(weights, scores.numpy(), rtol=1e-5, atol=1e-6)
    assert len(np.unique(experts)) > 1                        # the fixture really routes


def test_error_against_unquantized_float_experts():
    model = tiny_worker_gpt_oss()
    errors = {}
    for layer in range(LAYERS):
        ours = model.backend.to_host(model._mixture_of_experts(model.blocks[layer], model.backend.asarray(X)))
        errors[f"layer {layer}"] = relative_error(ours, transformers_mlp(layer, X, "float"))
    record("GT-036 MoE output vs transformers with unquantized float experts (Gaussian)", **errors)
    assert max(errors.values()) < 0.5
