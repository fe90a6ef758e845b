"""FT-044 Cancellation (engine side): a cancelled job stops within one token, ends with a final
event, and frees its KV cache.

Acceptance:
- the cancel flag is checked before every token: set while token i is being handled, the job
  emits no token after i and ends with End(stop_reason="cancelled", tokens_out=i+1);
- cancelled before the first token (even before prefill): Started, then End("cancelled"), 0 tokens;
- cancelled from another thread while generating: the job ends with End("cancelled");
- in every case the KV cache is freed: on the real NumPy backend its KV bytes go back to 0.
"""
from __future__ import annotations

import threading

import pytest

from stories.foundation._engine_fakes import FakeTokenizer, ScriptedModel, byte_vocab
from worker.engine import End, Engine, Started, Token
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
