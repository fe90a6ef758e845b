"""FT-044 Cancellation (engine side): a cancelled job stops within one token, ends with a final
event, and frees its KV cache.

Acceptance:
- the cancel flag is checked before every token: set while token i is being handled, the job
  emits no token after i and ends with End(stop_reason="cancelled", tokens_out=i+1);
- cancelled before the first token (even before prefill): Started, then End("cancelled"), 0 tokens;
- cancelled from another thread while generating: the job ends with End("cancelled");
- in every case the KV cache is freed: on the real NumPy backend its KV bytes go back to 0;
- prefill runs in chunks of PREFILL_CHUNK prompt tokens, the cancel flag checked between them: a
  cancel during a long prompt's prefill stops it within one chunk; the chunks (at offsets in the
  KV cache) give the logits transformers gives for the whole prompt (on the suite's --device).
"""
from __future__ import annotations

import threading

import pytest

from stories.foundation._engine_fakes import FakeTokenizer, ScriptedModel, byte_vocab
from worker.engine import PREFILL_CHUNK, End, Engine, Started, Token
from worker.sampling import SamplingParams

pytestmark = pytest.mark.story("FT-044")


def fake_engine(n=50):
    tok = FakeTokenizer(byte_vocab())
    model = ScriptedModel([97] * n, tok.vocab_size)
    return Engine(model, tok), model


@pytest.mark.parametrize("cancel_after", [0, 1, 5])
def test_cancel_set_during_token_i_stops_before_token_i_plus_1(cancel_after):
    engine, model = fake_engine()
    cancel = threading.Event()
    events = []
    for ev in engine.generate([1, 2, 3], SamplingParams(max_tokens=40, seed=1), cancel=cancel):
        events.append(ev)
        if isinstance(ev, Token) and ev.index == cancel_after:
            cancel.set()
    tokens = [e for e in events if isinstance(e, Token)]
    assert len(tokens) == cancel_after + 1
    assert isinstance(events[-1], End) and events[-1].stop_reason == "cancelled"
    assert events[-1].tokens_out == cancel_after + 1
    assert model.backend.live_caches == 0


def test_cancelled_before_start_ends_at_once_without_running_the_model():
    engine, model = fake_engine()
    cancel = threading.Event()
    cancel.set()
    events = list(engine.generate([1, 2, 3], SamplingParams(max_tokens=10), cancel=cancel))
    assert [type(e) for e in events] == [Started, End]
    assert events[-1].stop_reason == "cancelled" and events[-1].tokens_out == 0
    assert model.forward_calls == [] and model.backend.live_caches == 0


def real_tiny_engine(device):
    from fixtures.tiny_models import tiny_model_path
    from worker.gguf import GGUFModelFile
    from worker.models import load_model
    from worker.tokenizer import load_tokenizer

    gf = GGUFModelFile.open(tiny_model_path("llama"))
    model = load_model(gf, device)
    return Engine(model, load_tokenizer(gf)), model


def kv_bytes(model) -> int:
    return int(model.backend.memory_report().get("kv_cache", 0))


def test_cancel_from_another_thread_ends_the_job_and_frees_the_kv_cache(device):
    engine, model = real_tiny_engine(device)
    assert kv_bytes(model) == 0
    cancel = threading.Event()
    first_token = threading.Event()
    during: list[int] = []
    events: list = []

    def consume():
        for ev in engine.generate("Once upon a time", SamplingParams(max_tokens=200, seed=3), cancel=cancel):
            events.append(ev)
            if isinstance(ev, Token) and ev.index == 0:
                during.append(kv_bytes(model))
                first_token.set()

    job = threading.Thread(target=consume)
    job.start()
    assert first_token.wait(60), "no first token"
    cancel.set()
    job.join(60)
    assert not job.is_alive()
    end = events[-1]
    assert isinstance(end, End) and end.stop_reason == "cancelled"
    assert end.tokens_out < 200 and end.tokens_out == sum(isinstance(e, Token) for e in events)
    assert during[0] > 0, "the job held no KV cache while running"
    assert kv_bytes(model) == 0, "the cancelled job's KV cache was not freed"


def test_after_a_cancelled_job_the_next_job_runs_normally(device):
    engine, model = real_tiny_engine(device)
    cancel = threading.Event()
    cancel.set()
    assert list(engine.generate("Hello", SamplingParams(max_tokens=5), cancel=cancel))[-1].stop_reason == "cancelled"
    events = list(engine.generate("Hello", SamplingParams(max_tokens=5, temperature=0.0)))
    assert events[-1].stop_reason in ("max_tokens", "eos") and kv_bytes(model) == 0


# -- prefill in chunks: a long prompt's prefill can be cancelled -------------------------------------

class CancelDuringPrefill(ScriptedModel):
    """Sets the cancel flag while the first prefill chunk runs (as /cancel would, from another thread)."""

    def __init__(self, cancel, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cancel = cancel

    def forward(self, ids, cache, start_pos):
        self.cancel.set()
        return super().forward(ids, cache, start_pos)


def test_a_long_prompt_is_prefilled_in_chunks_at_increasing_offsets():
    tok = FakeTokenizer(byte_vocab())
    prompt = [5] * 300
    model = ScriptedModel([97, 98], tok.vocab_size, prompt_len=len(prompt))
    events = list(Engine(model, tok).generate(prompt, SamplingParams(max_tokens=2, temperature=0.0)))
    chunk = PREFILL_CHUNK
    expected = [(start, min(chunk, len(prompt) - start)) for start in range(0, len(prompt), chunk)]
    assert model.forward_calls == expected + [(len(prompt), 1)]
    assert [e.id for e in events if isinstance(e, Token)] == [97, 98]


def test_cancel_during_prefill_stops_before_the_next_chunk():
    tok = FakeTokenizer(byte_vocab())
    cancel = threading.Event()
    prompt = [5] * 300
    model = CancelDuringPrefill(cancel, [97] * 10, tok.vocab_size, prompt_len=len(prompt))
    events = list(Engine(model, tok).generate(prompt, SamplingParams(max_tokens=10), cancel=cancel))
    assert [type(e) for e in events] == [Started, End]
    assert events[-1].stop_reason == "cancelled" and events[-1].tokens_out == 0
    assert model.forward_calls == [(0, PREFILL_CHUNK)]          # one chunk, not the whole prompt
    assert model.backend.live_caches == 0


def test_chunked_prefill_gives_transformers_logits(device):
    """The chunks (each at its offset in the KV cache) give the logits transformers computes for the
    whole prompt at once: attention of a chunk at start_pos > 0 over the cached positions."""
    import numpy as np

    from fixtures.hf_reference import hf_logits, relative_logit_error
    from fixtures.tiny_models import tiny_hf_model

    _, model = real_tiny_engine(device)
    ids = np.random.default_rng(44).integers(0, 49152, size=2 * PREFILL_CHUNK + 37)
    cache = model.new_cache(len(ids))
    try:
        chunks = [model.backend.to_host(model.forward(ids[a:a + PREFILL_CHUNK], cache, a, logits="all"))
                  for a in range(0, len(ids), PREFILL_CHUNK)]
    finally:
        model.backend.free_kv_cache(cache)
    ours, reference = np.concatenate(chunks).astype(np.float64), hf_logits(tiny_hf_model("llama"), ids)
    nmse = float(np.sum((ours - reference) ** 2) / np.sum(reference ** 2))
    # FT-012's bound for the CUDA backend (float16 KV cache: earlier chunks' keys are read back
    # rounded); the float32 NumPy reference also stays within LT-033's relative error.
    assert nmse < 1e-5, f"chunked prefill on {device}: logits NMSE {nmse:.2e}"
    if device == "cpu":
        error = relative_logit_error(ours, reference)
        assert error < 1e-4, f"chunked prefill: relative logit error {error:.2e}"
