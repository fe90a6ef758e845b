"""FT-012: the host side of the decode graph (worker/backend/cuda_graph.py), without a GPU.

A stand-in for CuPy records what the graph machinery does: a capture runs the model's forward
once with the step's token and position read from the device buffer, a replay writes
[token, position] there and launches the graph without running the forward, a failed capture falls
back to the op-by-op forward (once more after an eager step, then for good), a replay refuses what
the op-by-op step would refuse. Graphs do not belong to a KV cache: a graph serves every cache of
its geometry up to the capacity it was captured for, the captured attention finding the cache
through the backend's address table, which a replay rewrites only when the cache changes; graphs
are kept across caches within an LRU bound and never keep their model alive. The GPU half (the same tokens
and logits as op by op, memory) is test_ft012_decode_graph.py.
"""
import contextlib
import itertools
import types

import numpy as np
import pytest

from worker.backend.base import KVCache
from worker.backend.cuda_graph import CAPTURE_ATTEMPTS, MAX_GRAPHS, MAX_PREFILL_GRAPHS, DecodeGraphs
from worker.errors import InvalidParamsError, PromptTooLongError

pytestmark = pytest.mark.story("FT-012")
VOCAB = 50


class _Buffer(np.ndarray):
    """A host array standing in for a device array: `data.copy_from_host_async` writes into it."""

    @property
    def data(self):
        arr = self

        def copy_from_host_async(ptr, nbytes, stream):
            import ctypes

            src = np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype=arr.dtype)
            arr.reshape(-1)[:src.size] = src
        return types.SimpleNamespace(copy_from_host_async=copy_from_host_async)


class _Graph:
    def __init__(self, recorded):
        self.recorded, self.launches = recorded, 0

    def launch(self, stream):
        self.launches += 1
        for op in self.recorded:
            op()


class _FakeCupy:
    """Streams that record the ops a capture makes (as callables) into a graph."""

    def __init__(self):
        self.capturing = None
        self.captures = 0
        pool = types.SimpleNamespace

        def memory_pool():
            return pool(malloc=lambda n: None, total_bytes=lambda: 1024, free_all_blocks=lambda: None)

        cp = self

        class Stream:
            def __init__(self, non_blocking=False):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def begin_capture(self):
                cp.capturing = []

            def end_capture(self):
                recorded, cp.capturing = cp.capturing, None
                if recorded is None:
                    raise RuntimeError("not capturing")
                cp.captures += 1
                return _Graph(recorded)

        self.cuda = types.SimpleNamespace(MemoryPool=memory_pool, Stream=Stream,
                                          using_allocator=lambda fn: contextlib.nullcontext(),
                                          get_current_stream=lambda: None)

    def zeros(self, n, dtype):
        return np.zeros(n, dtype).view(_Buffer)


class _Model:
    """forward(ids, cache, start_pos): one 'kernel' that writes logits from the device token and position."""

    def __init__(self, graphs, fail_captures=0):
        self.graphs, self.fail_captures, self.calls = graphs, fail_captures, []

    def forward(self, ids, cache, start_pos):
        self.calls.append((int(ids[0]), start_pos, self.graphs._capturing is not None))
        dev_ids = self.graphs.device_ids(np.asarray(ids), VOCAB)
        dev_pos = self.graphs.device_positions(np.array([start_pos]))
        logits = np.zeros((1, VOCAB), np.float32)
        if dev_ids is None:                                  # op by op: host values
            logits[0, 0], logits[0, 1] = ids[0], start_pos
            return logits
        if self.fail_captures:
            self.fail_captures -= 1
            raise RuntimeError("an op that needs the host")

        def kernel():
            logits[0, 0], logits[0, 1] = dev_ids[0], dev_pos[0]
        self.graphs.backend.cp.capturing.append(kernel)
        return logits


def _graphs(memory_limit=None):
    backend = types.SimpleNamespace(cp=_FakeCupy(), _workspace={}, memory_limit_bytes=memory_limit,
                                    _in_use=lambda: 4096,
                                    _persistent=lambda what, shape, dtype: np.zeros(shape, dtype).view(_Buffer))
    graphs = DecodeGraphs(backend)
    backend.graphs = graphs
    return graphs


def _cache(n_ctx=16):
    return KVCache(1, n_ctx, 1, 4, [], [])


def test_one_capture_then_replays_that_read_token_and_position_from_the_device():
    graphs = _graphs()
    model, cache = _Model(graphs), _cache()
    outs = [graphs.step(model.forward, np.array([tok]), cache, pos).copy() for pos, tok in [(5, 9), (6, 3), (7, 5)]]
    assert [(o[0, 0], o[0, 1]) for o in outs] == [(9, 5), (3, 6), (5, 7)]
    assert model.calls == [(0, 5, True)]                  # captured once, with a token that is not the position
    assert graphs.stats["captures"] == 1 and graphs.stats["replays"] == 3


def test_a_failed_capture_runs_the_step_op_by_op_and_is_tried_once_more():
    graphs = _graphs()
    model, cache = _Model(graphs, fail_captures=1), _cache()
    first = graphs.step(model.forward, np.array([9]), cache, 5)
    second = graphs.step(model.forward, np.array([3]), cache, 6)
    assert (first[0, 0], first[0, 1]) == (9, 5) and (second[0, 0], second[0, 1]) == (3, 6)
    assert graphs.stats["eager_steps"] == 1 and graphs.stats["captures"] == 1
    assert "needs the host" in graphs.stats["failures"][0]


def test_captures_that_keep_failing_leave_the_cache_op_by_op():
    graphs = _graphs()
    model, cache = _Model(graphs, fail_captures=99), _cache()
    for pos in range(5, 10):
        out = graphs.step(model.forward, np.array([7]), cache, pos)
        assert (out[0, 0], out[0, 1]) == (7, pos)
    assert len(graphs.stats["failures"]) == CAPTURE_ATTEMPTS
    assert graphs.stats["eager_steps"] == 5 and graphs.stats["replays"] == 0


def test_a_memory_cap_without_room_for_the_graph_keeps_the_step_op_by_op():
    graphs = _graphs(memory_limit=2048)
    model, cache = _Model(graphs), _cache()
    out = graphs.step(model.forward, np.array([7]), cache, 5)
    assert (out[0, 0], out[0, 1]) == (7, 5)
    assert graphs.stats["captures"] == 0 and "memory cap" in graphs.stats["failures"][0]


def test_a_replay_refuses_what_the_op_by_op_step_refuses():
    graphs = _graphs()
    model, cache = _Model(graphs), _cache(n_ctx=8)
    graphs.step(model.forward, np.array([7]), cache, 5)
    with pytest.raises(InvalidParamsError):
        graphs.step(model.forward, np.array([VOCAB]), cache, 6)
    with pytest.raises(PromptTooLongError):
        graphs.step(model.forward, np.array([7]), cache, 8)
    out = graphs.step(model.forward, np.array([4]), cache, 7)
    assert (out[0, 0], out[0, 1]) == (4, 7)


def test_outside_a_capture_the_ops_get_host_values():
    graphs = _graphs()
    assert graphs.device_ids(np.array([3]), VOCAB) is None
    assert graphs.device_positions(np.array([3])) is None
    assert int(graphs.device_start(3)) == 0               # NULL: the kernel takes the value argument


def test_scratch_grown_during_a_capture_comes_from_the_process_pool(monkeypatch):
    """Workspace scratch outlives the graph whose capture first asked for it, so it must not come
    from the graph's private pool (this thread's allocator while the step is captured)."""
    import sys

    from worker.backend import cuda_runtime
    from worker.backend.cuda_memory import CudaMemory

    allocators, allocated_with = [], []

    @contextlib.contextmanager
    def using_allocator(fn):
        allocators.append(fn)
        try:
            yield
        finally:
            allocators.pop()

    def empty(shape, dtype):
        allocated_with.append(allocators[-1] if allocators else "the global allocator")
        return np.zeros(shape, dtype)

    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(using_allocator=using_allocator), empty=empty)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_runtime, "_ALLOCATOR", "the process pool")

    class Memory(CudaMemory):
        cp = cupy

        def available_bytes(self):
            return 1 << 30

    memory = Memory()
    memory._init_memory(staging_bytes=1 << 20)
    held = []
    memory.graphs = types.SimpleNamespace(hold=held.append)
    with using_allocator("the graph's pool"):                  # what a capture does
        buf = memory._scratch("q8_activations", 64)
    assert allocated_with == ["the process pool"] and buf.size == 64
    assert held[-1] is memory._workspace["q8_activations"]      # and the graph keeps it alive


class _ChunkModel:
    """forward over T tokens: 'kernels' write logits from the device ids, positions and start."""

    def __init__(self, graphs):
        self.graphs, self.calls = graphs, []

    def forward(self, ids, cache, start_pos):
        ids = np.asarray(ids)
        positions = np.arange(start_pos, start_pos + len(ids))
        self.calls.append((len(ids), start_pos, self.graphs._capturing is not None))
        dev_ids = self.graphs.device_ids(ids, VOCAB)
        dev_pos = self.graphs.device_positions(positions)
        dev_start = self.graphs.device_start(start_pos)
        logits = np.zeros((1, VOCAB), np.float32)
        if dev_ids is None:
            logits[0, :3] = ids.sum(), positions.sum(), start_pos
            return logits

        def kernel():
            logits[0, :3] = dev_ids.sum(), dev_pos.sum(), dev_start[0]
        self.graphs.backend.cp.capturing.append(kernel)
        return logits

    def decode(self, ids, cache, start_pos):
        return self.forward(ids, cache, start_pos)


def test_a_prefill_chunk_is_captured_the_second_time_its_length_comes_then_replayed():
    graphs = _graphs()
    model, cache = _ChunkModel(graphs), _cache(n_ctx=64)
    chunks = [(np.arange(3, 11), 0), (np.arange(20, 28), 8), (np.arange(30, 38), 16), (np.array([5, 6, 7]), 24)]
    outs = [graphs.step(model.forward, ids, cache, start).copy() for ids, start in chunks]
    for (ids, start), out in zip(chunks, outs):          # the same values as op by op, whichever way it ran
        assert tuple(out[0, :3]) == (ids.sum(), np.arange(start, start + len(ids)).sum(), start)
    # 8 tokens: eager the first time, captured (with dummy ids) the second, replayed the third;
    # a 3-token chunk, seen once, runs op by op
    assert [c[2] for c in model.calls] == [False, True, False]
    assert graphs.stats["prefill_eager"] == 2 and graphs.stats["prefill_captures"] == 1
    assert graphs.stats["prefill_replays"] == 2 and graphs.stats["captures"] == 0


def test_a_prefill_graph_and_the_decode_graph_of_one_model_share_its_cache():
    graphs = _graphs()
    model, cache = _ChunkModel(graphs), _cache(n_ctx=64)
    for start in (0, 4):
        graphs.step(model.forward, np.arange(1, 5), cache, start)      # captured the second time
    graphs.step(model.decode, np.array([9]), cache, 8)                 # another forward of the same model
    out = graphs.step(model.forward, np.arange(2, 6), cache, 9)
    assert tuple(out[0, :3]) == (14, sum(range(9, 13)), 9)
    live = [g for n, g in graphs.backend._workspace.items() if n.startswith("decode_graph")]
    assert sorted(g.n_tokens for g in live) == [1, 4]
    assert graphs.stats["prefill_captures"] == 1 and graphs.stats["prefill_replays"] == 2


def test_a_replayed_prefill_refuses_a_bad_token_and_a_chunk_beyond_the_cache():
    graphs = _graphs()
    model, cache = _ChunkModel(graphs), _cache(n_ctx=12)
    graphs.step(model.forward, np.arange(1, 5), cache, 0)
    graphs.step(model.forward, np.arange(1, 5), cache, 4)
    with pytest.raises(InvalidParamsError):
        graphs.step(model.forward, np.array([1, 2, VOCAB, 3]), cache, 4)
    with pytest.raises(PromptTooLongError):
        graphs.step(model.forward, np.arange(1, 5), cache, 9)


# -- graphs across KV caches --------------------------------------------------------------------------

_DEVICE: dict = {}                                         # fake device memory: address -> host array
_ADDRESSES = itertools.count(0x1000, 0x1000)


class _DeviceArray:
    """A fake KV cache layer: an address (what the table holds) and the storage it names."""

    def __init__(self, n_ctx, dtype=np.float16):
        self.dtype = np.dtype(dtype)
        self.data = types.SimpleNamespace(ptr=next(_ADDRESSES))
        _DEVICE[self.data.ptr] = np.zeros(n_ctx, np.int64)


def _kv_cache(n_ctx=16, n_layers=2, head_dim=4, dtype=np.float16):
    k = [_DeviceArray(n_ctx, dtype) for _ in range(n_layers)]
    v = [_DeviceArray(n_ctx, dtype) for _ in range(n_layers)]
    return KVCache(n_layers, n_ctx, 1, head_dim, k, v)


def _stored(cache, layer=0):
    return _DEVICE[cache.k[layer].data.ptr]


class _KVModel:
    """forward over T tokens whose 'attention' stores each token at its position in layer 0's K and
    answers the sum of what that cache holds. Op by op it takes the cache's own arrays; captured, the
    address in the table (as attention.cu does with kv_table), read when the graph is launched."""

    def __init__(self, graphs):
        self.graphs, self.calls = graphs, []

    def forward(self, ids, cache, start_pos):
        ids = np.asarray(ids)
        positions = np.arange(start_pos, start_pos + len(ids))
        self.calls.append((len(ids), start_pos, self.graphs._capturing is not None))
        dev_ids = self.graphs.device_ids(ids, VOCAB)
        dev_pos = self.graphs.device_positions(positions)
        table, _capacity = self.graphs.kv_table(cache)
        logits = np.zeros((1, VOCAB), np.float32)
        if dev_ids is None:
            store = _stored(cache)
            store[positions] = ids
            logits[0, 0] = store.sum()
            return logits

        def kernel():
            store = _DEVICE[int(table[0])]                  # layer 0's K, as the table holds it now
            store[np.asarray(dev_pos)] = dev_ids
            logits[0, 0] = store.sum()
        self.graphs.backend.cp.capturing.append(kernel)
        return logits


def _kept(graphs):
    return [g for n, g in graphs.backend._workspace.items() if n.startswith("decode_graph")]


def test_a_graph_captured_on_one_cache_replays_on_another_of_its_geometry_and_smaller():
    graphs = _graphs()
    model = _KVModel(graphs)
    a, b = _kv_cache(n_ctx=32), _kv_cache(n_ctx=16)
    assert float(graphs.step(model.forward, np.array([7]), a, 0)[0, 0]) == 7     # captured on a, replayed
    assert float(graphs.step(model.forward, np.array([5]), b, 0)[0, 0]) == 5     # b's own history only
    assert float(graphs.step(model.forward, np.array([3]), b, 1)[0, 0]) == 8
    assert float(graphs.step(model.forward, np.array([2]), a, 1)[0, 0]) == 9     # back on a: a's history
    assert list(_stored(a)[:2]) == [7, 2] and list(_stored(b)[:2]) == [5, 3]
    assert model.calls == [(1, 0, True)]                                       # one capture, no eager step
    assert graphs.stats["captures"] == 1 and graphs.stats["replays"] == 4
    assert graphs.stats["table_writes"] == 3                                   # a, b, a: only when it changes


def test_a_cache_beyond_the_captured_capacity_recaptures_and_the_larger_graph_serves_the_smaller():
    graphs = _graphs()
    model = _KVModel(graphs)
    small, large, again = _kv_cache(n_ctx=16), _kv_cache(n_ctx=64), _kv_cache(n_ctx=16)
    for cache in (small, large, again):
        graphs.step(model.forward, np.array([4]), cache, 0)
    assert graphs.stats["captures"] == 2 and graphs.stats["replays"] == 3
    kept = _kept(graphs)
    assert len(kept) == 1 and kept[0].capacity == 64                          # the smaller one was replaced
    assert [int(_stored(c)[0]) for c in (small, large, again)] == [4, 4, 4]


def test_another_kv_geometry_gets_a_graph_of_its_own():
    graphs = _graphs()
    model = _KVModel(graphs)
    caches = [_kv_cache(n_layers=3), _kv_cache(), _kv_cache(head_dim=8), _kv_cache(dtype=np.float32)]
    for cache in caches:
        graphs.step(model.forward, np.array([4]), cache, 0)
    assert graphs.stats["captures"] == len(caches)
    assert len({g.geometry for g in _kept(graphs)}) == len(caches)
    assert [int(_stored(c)[0]) for c in caches] == [4] * len(caches)
    graphs.step(model.forward, np.array([4]), _kv_cache(n_layers=5), 0)     # the table grows: the graphs
    assert [g.geometry[0] for g in _kept(graphs)] == [5]                     # that read the old one go


def test_the_table_forgets_a_freed_cache():
    """A new cache may get a freed cache's addresses' neighbours or the same object identity: the table
    is rewritten for whatever cache comes after a free."""
    graphs = _graphs()
    model = _KVModel(graphs)
    a = _kv_cache()
    graphs.step(model.forward, np.array([4]), a, 0)
    graphs.forget(a)
    graphs.step(model.forward, np.array([4]), a, 1)
    assert graphs.stats["table_writes"] == 2


def test_a_prefill_length_is_captured_the_second_time_the_backend_sees_it_on_any_cache():
    graphs = _graphs()
    model = _KVModel(graphs)
    jobs = [_kv_cache(n_ctx=32) for _ in range(3)]
    for job in jobs:                                      # each job: an 8-token prompt on a new cache
        out = graphs.step(model.forward, np.arange(1, 9), job, 0)
        assert float(out[0, 0]) == 36 and list(_stored(job)[:8]) == list(range(1, 9))
    assert [c[2] for c in model.calls] == [False, True]   # eager, then captured (and replayed)
    assert graphs.stats["prefill_eager"] == 1 and graphs.stats["prefill_captures"] == 1
    assert graphs.stats["prefill_replays"] == 2


def test_kept_graphs_stay_few_the_least_recently_used_going_first():
    graphs = _graphs()
    models = [_KVModel(graphs) for _ in range(MAX_GRAPHS + 1)]
    cache = _kv_cache()
    for model in models[:MAX_GRAPHS]:
        graphs.step(model.forward, np.array([1]), cache, 0)
    graphs.step(models[0].forward, np.array([1]), cache, 1)     # the first is used again: models[1] is oldest
    graphs.step(models[-1].forward, np.array([1]), cache, 2)
    kept = _kept(graphs)
    assert len(kept) == MAX_GRAPHS
    assert {id(g.forward.__self__) for g in kept} == {id(m) for m in models} - {id(models[1])}
    for length in range(2, MAX_PREFILL_GRAPHS + 3):             # prefill graphs have a bound of their own
        for start in (0, 8):
            graphs.step(models[0].forward, np.arange(length), _kv_cache(), start)
    assert sum(g.n_tokens > 1 for g in _kept(graphs)) == MAX_PREFILL_GRAPHS
    assert sum(g.n_tokens == 1 for g in _kept(graphs)) == MAX_GRAPHS


def test_a_kept_graph_does_not_keep_its_model_alive():
    import gc
    import weakref

    graphs = _graphs()
    model = _KVModel(graphs)
    graphs.step(model.forward, np.array([1]), _kv_cache(), 0)
    assert len(_kept(graphs)) == 1
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
    graphs.prune()
    assert _kept(graphs) == []


def test_a_capture_refused_for_memory_is_tried_again_on_the_next_cache_and_one_that_needs_the_host_is_not():
    graphs = _graphs(memory_limit=2048)                   # the fake backend uses 4096: no room
    model = _KVModel(graphs)
    first = _kv_cache()
    for pos in range(3):
        graphs.step(model.forward, np.array([1]), first, pos)
    assert graphs.stats["captures"] == 0 and len(graphs.stats["failures"]) == CAPTURE_ATTEMPTS
    assert "memory cap" in graphs.stats["failures"][0]
    graphs.backend.memory_limit_bytes = None
    graphs.step(model.forward, np.array([1]), _kv_cache(), 0)
    assert graphs.stats["captures"] == 1

    hosty = _graphs()
    host_model = _Model(hosty, fail_captures=99)
    for _ in range(3):
        cache = _cache()
        for pos in range(3):
            hosty.step(host_model.forward, np.array([1]), cache, pos)
    assert len(hosty.stats["failures"]) == CAPTURE_ATTEMPTS                   # not again on later caches
    assert hosty.stats["eager_steps"] == 9
