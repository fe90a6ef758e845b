"""LT-024 Qwen forward pass: logits of our qwen2 adapter equal transformers' Qwen2ForCausalLM.

Metric: max |ours - transformers| / (max - min of transformers' logits) over every position of
a 24-token prompt; threshold 1e-4. Quantized files are compared with transformers holding the
same weights dequantized by gguf-py. Greedy continuations agree token for token.
"""
import numpy as np
import pytest

from fixtures.engine_greedy import engine_greedy
from fixtures.hf_reference import hf_greedy, hf_logits, relative_logit_error
from fixtures.tiny_models import tiny_hf_model, tiny_model_path, tiny_worker_model

PROMPT = np.random.default_rng(24).integers(0, 49152, 24)
THRESHOLD = 1e-4


@pytest.mark.story("LT-024", "LT-023")
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_K", "Q6_K"])
def test_qwen2_logits_match_transformers(qtype):
    model = tiny_worker_model("qwen2", qtype)
    ours = model.backend.to_host(model.forward(PROMPT, model.new_cache(32), 0, logits="all"))
    reference = hf_logits(tiny_hf_model("qwen2", qtype), PROMPT)
    assert ours.shape == reference.shape == (len(PROMPT), 49152)
    error = relative_logit_error(ours, reference)
    assert error < THRESHOLD, f"qwen2 {qtype}: relative logit error {error:.2e}"


@pytest.mark.story("LT-024")
def test_qwen2_greedy_continuation_matches_transformers():
    ours = engine_greedy(tiny_worker_model("qwen2"), tiny_model_path("qwen2"), PROMPT[:8], 16)
    assert ours == hf_greedy(tiny_hf_model("qwen2"), PROMPT[:8], 16)
