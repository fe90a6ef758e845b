"""FT-012 / FT-013: the single-token decode step replayed from a captured CUDA graph.

Acceptance:
- on every fixture architecture (llama, qwen2, phi3, gpt2, gpt-oss), 64 greedy steps through the
  captured graph give the same tokens and bit-identical logits as the same steps launched op by op
  (the graph holds the same kernels; only the position and token are read from device memory),
  and the graph is captured once and then replayed for every later step;
- the graph's buffers are workspace in memory_report while the graph lives and are freed with
  the KV cache it serves: device memory returns to where it was before the request;
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

pytestmark = [pytest.mark.gpu, pytest.mark.story("FT-012")]

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
def test_graph_buffers_are_workspace_and_go_with_the_cache():
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
    graph_bytes = sum(g.nbytes for g in graphs)
    assert b.graphs.stats["replays"] >= 1 and len(graphs) == 1
    assert logits is graphs[0].logits and graphs[0].pool.used_bytes() >= logits.nbytes   # replayed in its own pool
    assert during["workspace"] >= before["workspace"] + graph_bytes
    del logits
    b.free_kv_cache(cache)
    after = b.memory_report()
    assert not any(n.startswith("decode_graph") for n in b._workspace)
    assert after["workspace"] <= during["workspace"] - graph_bytes
    assert after["kv_cache"] == before["kv_cache"]
    assert after["device_free"] >= before["device_free"] - (after["workspace"] - before["workspace"])


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


def test_engine_jobs_one_after_another_each_capture_and_free_their_graph():
    """The served loop: each job's KV cache gets its own graph (captured at its first single-token
    step, a one-token prompt included) and loses it when the job ends; tokens equal op by op."""
    from fixtures.engine_greedy import IdsOnly, engine_greedy

    graphed = _model("llama", _backend(decode_graphs=True))
    eager = _model("llama", _backend(decode_graphs=False))
    prompts = [[1, 7, 3], [5, 2, 9, 4, 11, 6], [8]]
    for prompt in prompts:
        ids = engine_greedy(graphed, IdsOnly(), prompt, 12)
        assert ids == engine_greedy(eager, IdsOnly(), prompt, 12)
        assert not any(n.startswith("decode_graph") for n in graphed.backend._workspace)
        assert graphed.backend.memory_report()["kv_cache"] == 0
    stats = graphed.backend.graphs.stats
    assert stats["captures"] == len(prompts) and stats["failures"] == [], stats
