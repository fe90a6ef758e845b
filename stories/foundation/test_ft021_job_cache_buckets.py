"""FT-021 a served job's KV cache: its capacity is a bucket, so that jobs of different lengths share
the CUDA backend's captured graphs (worker/backend/cuda_graph.py serves every cache up to a graph's
captured capacity).

Acceptance:
- a job needing n positions (prompt + max_tokens - 1) gets a cache of the smallest 256 * 2^k >= n,
  at most the context (the engine's, and the model's), never fewer than n positions;
- the KV bytes reported while the job runs are the bucket's (what is allocated), and 0 after it;
- a bucket that does not fit the device falls back to exactly n positions; when that does not fit
  either, the job ends with VRAM_OOM as before;
- the tokens do not depend on the capacity: a bucketed job picks the same greedy tokens as one on a
  cache of exactly the positions it needs (NumPy reference);
- a cache asked for directly (model.new_cache(n)) keeps exactly n positions.
"""
from __future__ import annotations

import pytest

from stories.foundation._engine_fakes import FakeTokenizer, ScriptedModel, byte_vocab
from worker.engine import KV_BUCKET_MIN, End, Engine, Token
from worker.errors import DeviceOOMError
from worker.sampling import SamplingParams

pytestmark = [pytest.mark.story("FT-021"), pytest.mark.exclusive_device]
GREEDY = {"temperature": 0.0, "seed": 0}


def _engine(context_length=8192, n_ctx=None, model=None):
    tok = FakeTokenizer(byte_vocab())
    model = model or ScriptedModel([97] * 4000, tok.vocab_size, context_length=context_length)
    return Engine(model, tok, n_ctx=n_ctx), model


@pytest.mark.parametrize("needed, capacity", [(1, 256), (255, 256), (256, 256), (257, 512), (1000, 1024),
                                              (1024, 1024), (1025, 2048), (4095, 4096)])
def test_the_capacity_is_the_smallest_power_of_two_bucket_that_holds_the_job(needed, capacity):
    engine, _ = _engine(n_ctx=8192)
    assert KV_BUCKET_MIN == 256
    assert engine.cache_capacity(needed) == capacity


@pytest.mark.parametrize("context_length, n_ctx, needed, capacity", [
    (8192, 300, 10, 256), (8192, 300, 257, 300), (8192, 200, 10, 200), (100, None, 10, 100),
    (5000, 8192, 4097, 5000), (8192, 3000, 2999, 3000)])
def test_the_bucket_never_passes_the_context_nor_falls_below_the_job(context_length, n_ctx, needed, capacity):
    engine, _ = _engine(context_length=context_length, n_ctx=n_ctx)
    assert engine.cache_capacity(needed) == capacity >= needed


def test_a_job_runs_on_a_bucket_sized_cache_and_frees_it():
    engine, model = _engine(n_ctx=4096)
    events = list(engine.generate([1, 2, 3], SamplingParams(max_tokens=300, **GREEDY)))
    assert isinstance(events[-1], End) and events[-1].stop_reason == "max_tokens"
    assert [c.size for c in model.backend.allocated] == [512]          # 3 + 300 - 1 = 302 positions
    assert model.backend.live_caches == 0


class _ScarceModel(ScriptedModel):
    """Refuses caches of more than `fits` positions, as the CUDA backend does when memory is short."""

    def __init__(self, *args, fits: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.fits, self.refused = fits, []

    def new_cache(self, n_ctx):
        if n_ctx > self.fits:
            self.refused.append(n_ctx)
            raise DeviceOOMError(f"KV cache needs {n_ctx}", required_bytes=n_ctx, available_bytes=self.fits,
                                 device="cuda:0")
        return super().new_cache(n_ctx)


def test_a_bucket_that_does_not_fit_falls_back_to_the_exact_size():
    tok = FakeTokenizer(byte_vocab())
    model = _ScarceModel([97] * 50, tok.vocab_size, context_length=4096, fits=100)
    events = list(Engine(model, tok).generate([1, 2], SamplingParams(max_tokens=40, **GREEDY)))
    assert events[-1].stop_reason == "max_tokens" and sum(isinstance(e, Token) for e in events) == 40
    assert model.refused == [256] and [c.size for c in model.backend.allocated] == [41]
    events = list(Engine(model, tok).generate([1, 2], SamplingParams(max_tokens=200, **GREEDY)))
    assert events[-1].stop_reason == "error" and events[-1].error_code == "VRAM_OOM"
    assert model.refused == [256, 256, 201] and model.backend.live_caches == 0


def _tiny_numpy_model():
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.backend.numpy import NumpyBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    return load_model(GGUFModelFile.open(tiny_model_path("llama")), NumpyBackend())


class _IdsOnly:
    eos_ids: frozenset = frozenset()
    vocab_size = 0

    def stream_decoder(self):
        return self

    def push(self, token_id):
        return ""

    def flush(self):
        return ""


def test_the_kv_bytes_are_the_buckets_and_the_tokens_those_of_an_exact_cache():
    from fixtures.engine_greedy import engine_greedy

    model = _tiny_numpy_model()
    cfg = model.config
    prompt, n = [1, 7, 3, 12, 5], 12
    engine = Engine(model, _IdsOnly(), n_ctx=min(4096, cfg.context_length))
    capacity = engine.cache_capacity(len(prompt) + n - 1)
    assert capacity > len(prompt) + n
    during, ids = [], []
    for event in engine.generate(prompt, SamplingParams(max_tokens=n, **GREEDY)):
        if isinstance(event, Token):
            during.append(model.backend.memory_report()["kv_cache"])
            ids.append(event.id)
    bucket_bytes = 2 * cfg.n_layers * capacity * cfg.n_kv_heads * cfg.head_dim * 4   # float32 on the CPU
    assert during and set(during) == {bucket_bytes}
    assert model.backend.memory_report()["kv_cache"] == 0
    assert ids == engine_greedy(model, _IdsOnly(), prompt, n)      # its Engine's context: exactly the job


def test_a_cache_asked_for_directly_keeps_its_size():
    model = _tiny_numpy_model()
    cache = model.new_cache(37)
    try:
        assert cache.n_ctx == 37 and cache.k[0].shape[0] == 37
    finally:
        model.backend.free_kv_cache(cache)
    assert model.backend.memory_report()["kv_cache"] == 0
