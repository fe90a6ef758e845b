"""FT-022 KV cache management: prefill, then one-token decode steps reusing the cache.

Acceptance: for every architecture, the logits of each decode step equal the last row of a
full recompute of the same sequence in a fresh cache (relative error < 1e-5 of the logit
range), chunked prefill equals one-shot prefill, and a step past the cache's end is refused.
"""
import numpy as np
import pytest

from fixtures.hf_reference import relative_logit_error
from fixtures.tiny_models import ARCHS, tiny_worker_model
from worker.errors import PromptTooLongError

SEQUENCE = np.random.default_rng(22).integers(0, 49152, 14)


def full_recompute(model, ids):
    return model.backend.to_host(model.forward(ids, model.new_cache(len(ids)), 0, logits="all"))


@pytest.mark.story("FT-022")
@pytest.mark.parametrize("arch, qtype", [(a, "F32") for a in ARCHS] + [("llama", "Q4_K"), ("gpt2", "Q8_0")])
def test_decode_logits_equal_full_recompute(arch, qtype):
    model = tiny_worker_model(arch, qtype)
    reference = full_recompute(model, SEQUENCE)
    cache = model.new_cache(len(SEQUENCE))
    prefill = model.backend.to_host(model.forward(SEQUENCE[:8], cache, 0, logits="all"))
    assert relative_logit_error(prefill, reference[:8]) < 1e-5
    for pos in range(8, len(SEQUENCE)):
        step = model.backend.to_host(model.forward(SEQUENCE[pos:pos + 1], cache, pos))
        assert step.shape == (1, model.config.vocab_size)
        error = relative_logit_error(step, reference[pos:pos + 1])
        assert error < 1e-5, f"{arch} {qtype}: decode at position {pos} differs by {error:.2e}"


@pytest.mark.story("FT-022")
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_chunked_prefill_equals_one_shot(arch):
    model = tiny_worker_model(arch)
    cache = model.new_cache(len(SEQUENCE))
    chunks = [model.backend.to_host(model.forward(SEQUENCE[a:b], cache, a, logits="all"))
              for a, b in [(0, 3), (3, 10), (10, 14)]]
    assert relative_logit_error(np.concatenate(chunks), full_recompute(model, SEQUENCE)) < 1e-5


@pytest.mark.story("FT-022")
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_step_past_the_end_of_the_cache_is_refused(arch):
    model = tiny_worker_model(arch)
    cache = model.new_cache(4)
    model.forward(SEQUENCE[:4], cache, 0)
    with pytest.raises(PromptTooLongError):
        model.forward(SEQUENCE[4:5], cache, 4)
