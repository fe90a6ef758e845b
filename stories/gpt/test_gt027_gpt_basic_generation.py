"""GT-027 GPT basic generation: greedy generation with the KV cache on the tiny GPT-2.

Acceptance: the engine at temperature 0 (prefill, then one-token decode steps) produces the same 24 tokens
as transformers' greedy decoding with its own KV cache, for a prompt of real text tokenized by
transformers' tokenizer for the same vocabulary; the tokens stream out as Token events, in order.
"""
import pytest

from fixtures.engine_greedy import engine_greedy
from fixtures.hf_reference import hf_greedy, smollm2_hf_tokenizer
from fixtures.tiny_models import tiny_hf_model, tiny_model_path, tiny_worker_model


@pytest.mark.story("GT-027")
@pytest.mark.needs_model("smollm2")
@pytest.mark.parametrize("qtype", ["F32", "Q4_0"])
def test_greedy_generation_matches_transformers(qtype):
    prompt = smollm2_hf_tokenizer()("Once upon a time, in a small village,").input_ids
    streamed = []
    ours = engine_greedy(tiny_worker_model("gpt2", qtype), tiny_model_path("gpt2", qtype), prompt, 24,
                         on_token=streamed.append)
    assert ours == hf_greedy(tiny_hf_model("gpt2", qtype), prompt, 24)
    assert streamed == ours and len(ours) == 24
