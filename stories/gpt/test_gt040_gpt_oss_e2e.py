"""GT-040 GPT-OSS MXFP4 end to end (tiny fixture; the real 20B file is not available here):
our GPT-OSS adapter on the NumPy reference, reading the GGUF file with MXFP4 experts, agrees
with transformers' GptOssForCausalLM on CPU holding the same weights (experts as gguf-py
dequantizes them):
- logits over a text prompt and over a 40-token id sequence (8 sliding windows of 4):
  max |ours - transformers| / (max - min of transformers' logits) < 1e-4, same argmax everywhere;
- 32 greedy tokens equal transformers' greedy tokens (its own KV cache);
- every decode step through our KV cache gives the logits of a full recompute of the sequence
  (< 1e-5), including positions far beyond the sliding window.
The fixture exercises every part: dropping the sliding window, the sinks or the SwiGLU clamp, or
rounding the YaRN ramp to whole pairs (llama.cpp does; transformers' config says `truncate:
false`), each moves the logits by more than 10x the agreement threshold (checked below; routing is checked
against transformers' router in GT-036).
"""
import dataclasses
import functools

import numpy as np
import pytest

from fixtures.engine_greedy import engine_greedy
from fixtures.hf_reference import hf_greedy, hf_logits, relative_logit_error
from fixtures.tiny_gpt_oss import tiny_gpt_oss_hf, tiny_gpt_oss_path
from stories.gpt._mxfp4_helpers import record, tiny_worker_gpt_oss

pytestmark = pytest.mark.story("GT-040")
THRESHOLD = 1e-4
IDS = np.random.default_rng(40).integers(0, 49152, 40)


@functools.lru_cache(maxsize=1)
def transformers_logits_on_ids() -> np.ndarray:
    return hf_logits(tiny_gpt_oss_hf(), IDS)


def our_logits(model, ids) -> np.ndarray:
    cache = model.new_cache(len(ids))
    try:
        return model.backend.to_host(model.forward(np.asarray(ids), cache, 0, logits="all"))
    finally:
        model.backend.free_kv_cache(cache)


def test_logits_match_transformers_on_random_ids():
    model = tiny_worker_gpt_oss()
    ours, reference = our_logits(model, IDS), transformers_logits_on_ids()
    error = relative_logit_error(ours, reference)
    record("GT-040 tiny gpt-oss logits vs transformers (40 ids)", relative_logit_error=error)
    assert error < THRESHOLD
    np.testing.assert_array_equal(ours.argmax(-1), reference.argmax(-1))


def test_logits_match_transformers_on_a_text_prompt():
    from fixtures.tiny_gpt_oss import tiny_gpt_oss_path
    from worker.gguf import GGUFModelFile
    from worker.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(GGUFModelFile.open(tiny_gpt_oss_path()))
    ids = tokenizer.encode("The capital of France is Paris, and the capital of Italy is")
    assert len(ids) > 8
    model = tiny_worker_gpt_oss()
    ours, reference = our_logits(model, ids), hf_logits(tiny_gpt_oss_hf(), ids)
    assert relative_logit_error(ours, reference) < THRESHOLD
    np.testing.assert_array_equal(ours.argmax(-1), reference.argmax(-1))


def test_32_greedy_tokens_equal_transformers():
    model = tiny_worker_gpt_oss()
    prompt = IDS[:6]
    ours = engine_greedy(model, tiny_gpt_oss_path(), prompt, 32)
    reference = hf_greedy(tiny_gpt_oss_hf(), prompt, 32)
    record("GT-040 greedy tokens", ours=ours, transformers=reference)
    assert ours == reference
    assert len(set(ours)) > 3                                     # not a degenerate repetition


def test_decode_with_cache_equals_full_recompute_beyond_the_window():
    model = tiny_worker_gpt_oss()
    b = model.backend
    sequence = list(IDS[:6])
    cache = model.new_cache(40)
    logits = b.to_host(model.forward(np.array(sequence), cache, 0, logits="all"))
    worst = relative_logit_error(logits, our_logits(model, sequence))
    for step in range(24):                                        # positions 6..29, window 4
        next_id = int(logits[-1].argmax())
        logits = b.to_host(model.forward(np.array([next_id]), cache, len(sequence)))
        sequence.append(next_id)
        worst = max(worst, relative_logit_error(logits[-1], our_logits(model, sequence)[-1]))
    b.free_kv_cache(cache)
    record("GT-040 decode vs full recompute", worst_relative_logit_error=worst, steps=24)
    assert worst < 1e-5


@pytest.mark.parametrize("part", ["no sliding window", "no sinks", "no swiglu clamp", "yarn ramp rounded"])
def test_the_fixture_exercises_each_part(part):
    model = tiny_worker_gpt_oss()
    reference = transformers_logits_on_ids()
    saved_blocks = [dataclasses.replace(blk) for blk in model.blocks]
    saved_rope, saved_limit = model.rope, model.swiglu_limit
    try:
        if part == "no sliding window":
            for blk in model.blocks:
                blk.sliding_window = 0
        elif part == "no sinks":
            for blk in model.blocks:
                blk.sinks = None
        elif part == "no swiglu clamp":
            model.swiglu_limit = 1e30
        else:
            model.rope = dataclasses.replace(model.rope, truncate=True)
        error = relative_logit_error(our_logits(model, IDS), reference)
    finally:
        model.blocks[:] = saved_blocks
        model.rope, model.swiglu_limit = saved_rope, saved_limit
    record(f"GT-040 logits vs transformers with {part}", relative_logit_error=error)
    assert error > 10 * THRESHOLD, f"{part}: the fixture does not exercise this part"
