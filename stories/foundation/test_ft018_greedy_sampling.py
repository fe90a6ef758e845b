"""FT-018 Greedy sampling: temperature 0 picks the most likely token.

Acceptance:
- at temperature 0 the sampler returns torch.argmax of the logits (ties: the first, i.e. the
  lowest id), whatever the seed and whatever top-k / top-p / min-p say;
- greedy uses no randomness: the same logits give the same token for every seed;
- with a repetition penalty, greedy is the argmax of transformers' penalized logits;
- end to end, the engine at temperature 0 generates transformers' greedy continuation of the
  same tiny model (fixtures.tiny_models), token for token.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stories.foundation._sampling_oracle import hf_process, logit_rows
from worker.sampling import Sampler, SamplingParams

pytestmark = pytest.mark.story("FT-018")


def torch_argmax(x) -> int:
    import torch

    return int(torch.argmax(torch.tensor(np.asarray(x, np.float64))))


@settings(max_examples=300, deadline=None)
@given(logit_rows(max_size=512), st.integers(0, 2**64 - 1))
def test_greedy_is_torch_argmax_ties_to_the_lowest_id(logits, seed):
    row = logits.astype(np.float32)
    assert Sampler(SamplingParams(temperature=0.0), seed).sample(row) == torch_argmax(row)


@settings(max_examples=100, deadline=None)
@given(logit_rows(), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
       st.integers(0, 5), st.floats(0.05, 1.0), st.floats(0.0, 0.9))
def test_greedy_ignores_seed_and_filters(logits, seed_a, seed_b, top_k, top_p, min_p):
    plain = Sampler(SamplingParams(temperature=0.0), seed_a).sample(logits)
    filtered = Sampler(SamplingParams(temperature=0.0, top_k=top_k, top_p=top_p, min_p=min_p), seed_b)
    assert [filtered.sample(logits) for _ in range(3)] == [plain] * 3


@settings(max_examples=150, deadline=None)
@given(logit_rows(min_size=4), st.floats(0.5, 3.0), st.data())
def test_greedy_with_repetition_penalty_is_argmax_of_transformers_penalized_logits(logits, penalty, data):
    history = data.draw(st.lists(st.integers(0, len(logits) - 1), min_size=1, max_size=20))
    params = SamplingParams(temperature=0.0, repetition_penalty=penalty)    # window 64 > history: no cut
    ours = Sampler(params, 0).sample(logits, history)
    assert ours == torch_argmax(hf_process(logits, repetition_penalty=penalty, history=history))


def test_greedy_engine_continuation_equals_transformers_greedy(device):
    from fixtures.hf_reference import hf_greedy
    from fixtures.tiny_models import tiny_hf_model, tiny_model_path
    from worker.engine import End, Engine, Token
    from worker.gguf import GGUFModelFile
    from worker.models import load_model
    from worker.tokenizer import load_tokenizer

    gf = GGUFModelFile.open(tiny_model_path("qwen2"))
    tokenizer = load_tokenizer(gf)
    engine = Engine(load_model(gf, device), tokenizer)
    prompt = tokenizer.encode("The quick brown fox")
    events = list(engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=16, seed=1)))
    ours = [e.id for e in events if isinstance(e, Token)]
    theirs = hf_greedy(tiny_hf_model("qwen2"), prompt, 16)
    end = events[-1]
    assert isinstance(end, End) and end.stop_reason in ("max_tokens", "eos")
    if end.stop_reason == "eos":      # transformers' next token must be the EOS we stopped at
        assert theirs[len(ours)] in tokenizer.eos_ids
        theirs = theirs[:len(ours)]
    assert ours == theirs
