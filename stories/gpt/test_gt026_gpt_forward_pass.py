"""GT-026 GPT forward pass: logits of the GPT-2 adapter equal transformers' GPT2LMHeadModel.

Metric: max |ours - transformers| / (max - min of transformers' logits) over a 32-token prompt;
threshold 1e-4. Quantized files (Q4_K as in a Q4_K_M file, and the others) are compared with
transformers holding the gguf-py-dequantized weights.
"""
import numpy as np
import pytest

from fixtures.hf_reference import hf_logits, relative_logit_error
from fixtures.tiny_models import tiny_hf_model, tiny_worker_model

PROMPT = np.random.default_rng(26).integers(0, 49152, 32)
THRESHOLD = 1e-4


@pytest.mark.story("GT-026")
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_K", "Q6_K"])
def test_gpt2_logits_match_transformers(qtype):
    model = tiny_worker_model("gpt2", qtype)
    ours = model.backend.to_host(model.forward(PROMPT, model.new_cache(len(PROMPT)), 0, logits="all"))
    reference = hf_logits(tiny_hf_model("gpt2", qtype), PROMPT)
    error = relative_logit_error(ours, reference)
    assert error < THRESHOLD, f"gpt2 {qtype}: relative logit error {error:.2e}"
    np.testing.assert_array_equal(ours.argmax(-1), reference.argmax(-1))
