"""LT-031 Phi-3 forward pass: fused QKV and gate/up tensors, logits equal transformers' Phi3.

Metric: max |ours - transformers| / (max - min of transformers' logits) over a 24-token prompt;
threshold 1e-4 (quantized files: transformers holds the gguf-py-dequantized weights).
"""
import numpy as np
import pytest

from fixtures.engine_greedy import engine_greedy
from fixtures.hf_reference import hf_greedy, hf_logits, relative_logit_error
from fixtures.tiny_models import tiny_hf_model, tiny_model_path, tiny_worker_model

PROMPT = np.random.default_rng(31).integers(0, 49152, 24)
THRESHOLD = 1e-4


@pytest.mark.story("LT-031")
@pytest.mark.parametrize("qtype", ["F32", "Q4_0", "Q4_K"])
def test_phi3_logits_match_transformers(qtype):
    model = tiny_worker_model("phi3", qtype)
    assert "blk.0.attn_qkv.weight" in model.tensor_names and "blk.0.ffn_gate.weight" not in model.tensor_names
    ours = model.backend.to_host(model.forward(PROMPT, model.new_cache(32), 0, logits="all"))
    error = relative_logit_error(ours, hf_logits(tiny_hf_model("phi3", qtype), PROMPT))
    assert error < THRESHOLD, f"phi3 {qtype}: relative logit error {error:.2e}"


@pytest.mark.story("LT-031")
def test_phi3_greedy_continuation_matches_transformers():
    ours = engine_greedy(tiny_worker_model("phi3"), tiny_model_path("phi3"), PROMPT[:8], 16)
    assert ours == hf_greedy(tiny_hf_model("phi3"), PROMPT[:8], 16)
