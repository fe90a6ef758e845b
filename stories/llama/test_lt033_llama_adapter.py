"""LT-033 Llama inference adapter: a llama GGUF (llama.cpp's permuted Q/K, NORM rope) runs to
the same logits and greedy tokens as transformers.

Tiny random llama: relative logit error (max |diff| / logit range) < 1e-4 for F32 and
quantized files. Real SmolLM2-135M-Instruct Q4_1: transformers loads the same GGUF with its own
reader (dequantizing with gguf-py and undoing the permutation); logits on a prompt agree within
1e-4 of the range, and the 64 greedy tokens after "The capital of France is" are identical.
"""
import numpy as np
import pytest

from fixtures.engine_greedy import engine_greedy
from fixtures.hf_reference import hf_greedy, hf_logits, relative_logit_error, smollm2_hf_model, smollm2_hf_tokenizer
from fixtures.paths import smollm2_path
from fixtures.tiny_models import tiny_hf_model, tiny_worker_model
from worker.backend.numpy import NumpyBackend
from worker.gguf import GGUFModelFile
from worker.models import load_model

THRESHOLD = 1e-4
PROMPT = np.random.default_rng(33).integers(0, 49152, 24)


@pytest.mark.story("LT-033")
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_tiny_llama_logits_match_transformers(qtype):
    model = tiny_worker_model("llama", qtype)
    ours = model.backend.to_host(model.forward(PROMPT, model.new_cache(32), 0, logits="all"))
    error = relative_logit_error(ours, hf_logits(tiny_hf_model("llama", qtype), PROMPT))
    assert error < THRESHOLD, f"llama {qtype}: relative logit error {error:.2e}"


@pytest.fixture(scope="module")
def smollm2():
    return load_model(GGUFModelFile.open(smollm2_path()), NumpyBackend())


@pytest.mark.story("LT-033")
@pytest.mark.needs_model("smollm2")
def test_smollm2_logits_match_transformers(smollm2):
    ids = smollm2_hf_tokenizer()("The capital of France is the city of").input_ids
    ours = smollm2.backend.to_host(smollm2.forward(np.array(ids), smollm2.new_cache(len(ids)), 0, logits="all"))
    reference = hf_logits(smollm2_hf_model(), ids)
    error = relative_logit_error(ours, reference)
    assert error < THRESHOLD, f"SmolLM2: relative logit error {error:.2e}"
    np.testing.assert_array_equal(ours.argmax(-1), reference.argmax(-1))


@pytest.mark.story("LT-033")
@pytest.mark.needs_model("smollm2")
def test_smollm2_64_greedy_tokens_match_transformers(smollm2):
    ids = smollm2_hf_tokenizer()("The capital of France is").input_ids
    ours = engine_greedy(smollm2, smollm2_path(), ids, 64)
    theirs = hf_greedy(smollm2_hf_model(), ids, 64)
    agreement = sum(a == b for a, b in zip(ours, theirs))
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    assert ours == theirs, f"{agreement}/64 tokens agree; first difference at {first}"
    assert "Paris" in smollm2_hf_tokenizer().decode(ours)
