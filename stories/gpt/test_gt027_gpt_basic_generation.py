"""GT-027 GPT basic generation: greedy generation with the KV cache on the tiny GPT-2.

Acceptance: greedy_generate (prefill, then one-token decode steps) produces the same 24 tokens
as transformers' greedy decoding with its own KV cache, for a prompt of real text tokenized by
transformers' tokenizer for the same vocabulary; tokens stream through on_token in order.
"""
import pytest

from fixtures.hf_reference import hf_greedy, smollm2_hf_tokenizer
from fixtures.tiny_models import tiny_hf_model, tiny_worker_model
from worker.models.generate import greedy_generate


@pytest.mark.story("GT-027")
@pytest.mark.needs_model("smollm2")
@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
def test_greedy_generation_matches_transformers(qtype):
    prompt = smollm2_hf_tokenizer()("Once upon a time, in a small village,").input_ids
    streamed = []
    ours = greedy_generate(tiny_worker_model("gpt2", qtype), prompt, 24, on_token=streamed.append)
    assert ours == hf_greedy(tiny_hf_model("gpt2", qtype), prompt, 24)
    assert streamed == ours and len(ours) == 24
