"""FT-012 / FT-013: the single-token decode step replayed from a captured CUDA graph.

Acceptance:
- on every fixture architecture (llama, qwen2, phi3, gpt2, gpt-oss), 64 greedy steps through the
  captured graph give the same tokens and bit-identical logits as the same steps launched op by op
  (the graph holds the same kernels; only the position and token are read from device memory),
  and the graph is captured once and then replayed for every later step;
- a graph does not belong to a KV cache: captured on one cache, it replays on another of the same
  geometry and no larger capacity (attention reads the cache's addresses from the backend's table)
  with the logits an op-by-op pass gives on that cache, bit for bit;
- the graph's buffers are workspace in memory_report and are kept when a KV cache is freed, for the
  next cache: device memory returns to where it was before the request, less the kept graphs'
  pools, which the workspace figure counts;
- jobs served one after another (Engine.run, a new cache each): the second job's decode steps, and
  its prefill of a token count the first job had, replay the first job's graphs (no capture), with
  the NumPy reference's greedy tokens;
- a memory cap too tight for the graph's buffers leaves decoding on the op-by-op path with the
  same tokens, and says why (backend.graphs.stats);
- a replayed step still refuses a token outside the vocabulary (INVALID_PARAMS) and a position
  beyond its KV cache (PROMPT_TOO_LONG), like the op-by-op step.
Whole-model agreement with the NumPy reference (which runs through the graph by default) is
test_ft012_cuda_end_to_end.py.
"""
import numpy as np
import pytest

from worker.errors import InvalidParamsError, PromptTooLongError

pytestmark = [pytest.mark.gpu, pytest.mark.story("FT-012"), pytest.mark.exclusive_device]

STEPS = 64
PROMPT = [1, 7, 3, 12, 5]
GRAPH_ARCHS = ["llama", "qwen2", "phi3", "gpt2", "gpt-oss"]


def _backend(**options):
    from stories.foundation._cuda_conformance import cuda_backend

    cuda_backend()                                   # skips without a usable GPU
    from worker.backend.cuda import CudaBackend

    return CudaBackend(**options)


def _model(arch, backend):
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    return load_model(GGUFModelFile.open(tiny_model_path(arch)), backend)


def _greedy(model, steps=STEPS):
    """(tokens, logits of every step) of greedy decoding on a fresh cache, freed at the end."""
    b = model.backend
    cache = model.new_cache(len(PROMPT) + steps)
    try:
        logits = model.forward(np.asarray(PROMPT), cache, 0)
        tokens, rows, pos = [], [], len(PROMPT)
        for _ in range(steps):
            rows.append(b.to_host(logits[-1]))
            tokens.append(int(np.argmax(rows[-1])))
            logits = model.forward(np.array([tokens[-1]]), cache, pos)
            pos += 1
        return tokens, np.stack(rows)
    finally:
        b.free_kv_cache(cache)


@pytest.mark.parametrize("arch", GRAPH_ARCHS)
def test_replayed_steps_equal_op_by_op_steps(arch):
    graphed = _model(arch, _backend(decode_graphs=True))
    eager = _model(arch, _backend(decode_graphs=False))
    tokens, logits = _greedy(graphed)
    ref_tokens, ref_logits = _greedy(eager)
    stats = graphed.backend.graphs.stats
    assert stats["failures"] == [] and stats["captures"] == 1, stats
    assert stats["replays"] == STEPS, stats
    assert tokens == ref_tokens
    np.testing.assert_array_equal(logits, ref_logits)


@pytest.mark.story("FT-013")
def test_graph_buffers_are_workspace_and_stay_for_the_next_cache():
    b = _backend(decode_graphs=True)
    model = _model("qwen2", b)
    warm = model.new_cache(32)                   # kernels compiled, cuBLAS handle made, scratch sized
    model.forward(np.asarray(PROMPT), warm, 0)
    b.free_kv_cache(warm)
    b.release_cached_memory()
    before = b.memory_report()
    cache = model.new_cache(32)
    logits = model.forward(np.asarray(PROMPT), cache, 0)
    for pos in range(len(PROMPT), len(PROMPT) + 3):
        logits = model.forward(np.array([int(b.argmax(logits[-1]))]), cache, pos)
    during = b.memory_report()
    graphs = [g for n, g in b._workspace.items() if n.startswith("decode_graph") and g.graph is not None]
    decode = [g for g in graphs if g.n_tokens == 1]
    graph_bytes = sum(g.nbytes for g in graphs)
    assert b.graphs.stats["replays"] >= 1 and len(decode) == 1
    assert logits is decode[0].logits and decode[0].pool.used_bytes() >= logits.nbytes   # replayed in its own pool
    assert during["workspace"] >= before["workspace"] + graph_bytes
    del logits
    b.free_kv_cache(cache)
    after = b.memory_report()
    kept = [g for n, g in b._workspace.items() if n.startswith("decode_graph") and g.graph is not None]
    assert kept == graphs                                    # kept for the next cache, still counted
    assert after["workspace"] >= before["workspace"] + graph_bytes
    assert after["kv_cache"] == before["kv_cache"]
    assert after["device_free"] >= before["device_free"] - (after["workspace"] - before["workspace"])
    captures = b.graphs.stats["captures"]
    nxt = model.new_cache(32)                                # the next request: a replay, no capture
    try:
        logits = model.forward(np.array([3]), nxt, 0)
        assert np.isfinite(b.to_host(logits)).all()
    finally:
        b.free_kv_cache(nxt)
    assert b.graphs.stats["captures"] == captures
    b.graphs.release_all()
    assert b.memory_report()["workspace"] <= after["workspace"] - graph_bytes


@pytest.mark.story("FT-013")
def test_a_scratch_buffer_that_grows_after_a_capture_counts_while_the_graph_reads_it():
    """The decode graph reads a scratch buffer; the buffer grows after the capture (a new allocation under
    the same name). The old one stays allocated as long as the graph, so the workspace still counts it,
    once, until the graphs are released."""
    b = _backend(decode_graphs=True)
    model = _model("qwen2", b)
    cache = model.new_cache(32)
    try:
        logits = model.forward(np.asarray(PROMPT), cache, 0)
        for pos in range(len(PROMPT), len(PROMPT) + 3):
            logits = model.forward(np.array([int(b.argmax(logits[-1]))]), cache, pos)
    finally:
        b.free_kv_cache(cache)
    graphs = [g for n, g in b._workspace.items() if n.startswith("decode_graph") and g.graph is not None]
    assert b.graphs.stats["replays"] >= 1 and graphs
    held = {a.data.mem.ptr for g in graphs for a in g.held}
    name, old = next((n, a) for n, a in b._workspace.items()
                     if getattr(a, "dtype", None) == np.float32 and a.data.mem.ptr in held)
    before = b.memory_report()["workspace"]
    b._scratch(name, 2 * old.size)                           # grown: a new buffer, the old one still read
    grown = b._workspace[name]
    assert grown.data.mem.ptr != old.data.mem.ptr
    assert b.memory_report()["workspace"] == before - old.nbytes + grown.nbytes + old.data.mem.size
    graph_bytes = sum(g.nbytes for n, g in b._workspace.items() if n.startswith("decode_graph"))
    b.graphs.release_all()
    assert b.memory_report()["workspace"] == before - old.nbytes + grown.nbytes - graph_bytes


def test_a_graph_captured_on_one_cache_replays_on_a_smaller_one_like_op_by_op():
    """Decode and prefill graphs captured on cache A (128 positions) replay on cache B (48): the
    logits of every step on B equal an op-by-op pass on a cache of B's size, bit for bit."""
    graphed = _model("qwen2", _backend(decode_graphs=True))
    eager = _model("qwen2", _backend(decode_graphs=False))
    g = graphed.backend
    a = graphed.new_cache(128)
    try:
        logits = graphed.forward(np.array([1, 7, 3, 12, 5]), a, 0)          # 5 tokens: seen once, op by op
        logits = graphed.forward(np.array([2, 9, 4, 11, 6]), a, 5)          # seen again: captured on A
        for pos in range(10, 14):
            logits = graphed.forward(np.array([int(g.argmax(logits[-1]))]), a, pos)
    finally:
        g.free_kv_cache(a)
    stats = dict(g.graphs.stats)
    assert stats["captures"] == 1 and stats["prefill_captures"] == 1 and stats["failures"] == [], stats

    def run_on_b(model):
        b = model.new_cache(48)
        try:
            rows = [model.backend.to_host(model.forward(np.array([8, 3, 3, 1, 9]), b, 0)[-1])]
            for pos in range(5, 5 + 24):
                rows.append(model.backend.to_host(model.forward(np.array([int(np.argmax(rows[-1]))]), b, pos)[-1]))
            return np.stack(rows)
        finally:
            model.backend.free_kv_cache(b)

    on_b, ref = run_on_b(graphed), run_on_b(eager)
    after = g.graphs.stats
    assert after["captures"] == 1 and after["prefill_captures"] == 1, after        # nothing captured for B
    assert after["replays"] == stats["replays"] + 24 and after["prefill_replays"] == stats["prefill_replays"] + 1
    assert after["table_writes"] > stats["table_writes"]                           # B's addresses went in
    np.testing.assert_array_equal(on_b, ref)


def test_a_cap_too_tight_for_the_graph_keeps_decoding_op_by_op():
    b = _backend(decode_graphs=True)
    model = _model("llama", b)
    b.graphs.enabled = False
    ref_tokens, _ = _greedy(model, steps=8)                 # op by op: sizes every workspace buffer
    b.graphs.enabled = True
    cache = model.new_cache(len(PROMPT) + 8)
    b.memory_limit_bytes = b._in_use()                      # no room for the graph's own buffers
    try:
        logits = model.forward(np.asarray(PROMPT), cache, 0)
        tokens, pos = [], len(PROMPT)
        for _ in range(8):
            tokens.append(int(b.argmax(logits[-1])))
            logits = model.forward(np.array([tokens[-1]]), cache, pos)
            pos += 1
    finally:
        b.free_kv_cache(cache)
    stats = b.graphs.stats
    assert tokens == ref_tokens
    assert stats["captures"] == 0 and stats["eager_steps"] >= 7, stats
    assert any("memory cap" in f or "VRAM_OOM" in f or "DeviceOOM" in f for f in stats["failures"]), stats


def test_a_replayed_step_refuses_bad_tokens_and_positions():
    b = _backend(decode_graphs=True)
    model = _model("llama", b)
    cache = model.new_cache(len(PROMPT) + 3)
    try:
        logits = model.forward(np.asarray(PROMPT), cache, 0)
        model.forward(np.array([3]), cache, len(PROMPT))
        model.forward(np.array([4]), cache, len(PROMPT) + 1)
        assert b.graphs.stats["replays"] >= 1
        with pytest.raises(InvalidParamsError) as bad_token:
            model.forward(np.array([model.config.vocab_size]), cache, len(PROMPT) + 2)
        assert bad_token.value.code == "INVALID_PARAMS"
        with pytest.raises(PromptTooLongError):
            model.forward(np.array([3]), cache, len(PROMPT) + 3)
        logits = model.forward(np.array([5]), cache, len(PROMPT) + 2)     # still serves the next step
        assert np.isfinite(b.to_host(logits)).all()
    finally:
        b.free_kv_cache(cache)


def test_served_jobs_replay_the_graphs_of_earlier_jobs():
    """The served loop: each job gets a new KV cache (Engine.run); the first job captures the decode
    step, the second replays it at its first decode step and replays its prefill (a token count the
    first job had); tokens equal the NumPy reference's; memory returns to the pre-job figure less the
    kept graphs' pools, which are workspace."""
    from fixtures.engine_greedy import IdsOnly
    from worker.backend.numpy import NumpyBackend
    from worker.engine import Engine, Token
    from worker.sampling import SamplingParams

    b = _backend(decode_graphs=True)
    graphed, reference = _model("llama", b), _model("llama", NumpyBackend())
    prompts = [[1, 7, 3, 12, 5, 9], [5, 2, 9, 4, 11, 6], [8]]

    def job(model, prompt):
        engine = Engine(model, IdsOnly())                    # the model's context: every job's cache is 128
        events = engine.generate(prompt, SamplingParams(temperature=0.0, max_tokens=12, seed=0))
        return [e.id for e in events if isinstance(e, Token)]

    b.graphs.enabled = False                                 # warm up op by op: kernels, cuBLAS, scratch
    job(graphed, prompts[0])
    b.graphs.enabled = True
    b.release_cached_memory()
    before, used_before = b.memory_report(), _device_used()
    stats = b.graphs.stats
    tokens = [job(graphed, prompts[0])]
    assert stats["captures"] == 1 and stats["prefill_eager"] == 1 and stats["prefill_captures"] == 0, stats
    replays = stats["replays"]
    tokens.append(job(graphed, prompts[1]))
    assert stats["captures"] == 1, stats                                   # no capture at its first decode step
    assert stats["replays"] == replays + 11, stats                         # every decode step replayed
    assert stats["prefill_captures"] == 1 and stats["prefill_replays"] == 1, stats   # 6 tokens, seen before
    tokens.append(job(graphed, prompts[2]))
    assert stats["captures"] == 1 and stats["failures"] == [], stats
    assert tokens == [job(reference, p) for p in prompts]
    b.release_cached_memory()
    after = b.memory_report()
    kept = [g for n, g in b._workspace.items() if n.startswith("decode_graph") and g.graph is not None]
    grown = after["workspace"] - before["workspace"]
    assert after["kv_cache"] == 0 and len(kept) == 2
    assert grown >= sum(g.nbytes for g in kept)
    # the instantiated graphs' own device memory is the driver's, outside any pool: a few MiB allowed
    assert abs(_device_used() - used_before - grown) <= 4 << 20, (_device_used() - used_before, grown)


def _device_used() -> int:
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return int(total - free)
