"""FT-013 device memory: what the workspace figure counts (worker/backend/cuda_memory.py), without a GPU.

Acceptance:
- the workspace is every persistent scratch buffer, the RoPE tables and each captured graph's own pool;
- a buffer a kept graph still reads after it was replaced (a scratch buffer or RoPE table that grew after the
  capture) stays allocated as long as the graph, so it is still workspace: counted once however many graphs or
  views hold it, and not at all once no graph holds it;
- a view of a current buffer held by a graph is not counted twice.
The GPU half (real graphs, memory_report against cudaMemGetInfo) is test_ft012_decode_graph.py.
"""
import types

import pytest

from worker.backend.cuda_memory import CudaMemory, replaced_but_held_bytes

pytestmark = pytest.mark.story("FT-013")


class _Allocation:
    """A device allocation's handle, as CuPy's Memory: its address and size."""

    def __init__(self, ptr: int, size: int):
        self.ptr, self.size = ptr, size


class _Array:
    """A device array standing in for cupy.ndarray: nbytes, and data.mem, the allocation it lives in."""

    def __init__(self, mem: _Allocation, nbytes: int | None = None):
        self.data = types.SimpleNamespace(mem=mem)
        self.nbytes = mem.size if nbytes is None else nbytes

    def view(self, nbytes: int) -> "_Array":
        return _Array(self.data.mem, nbytes)


class _Graph:
    """A captured graph as the workspace holds it: its pool's bytes and the arrays its kernels read."""

    def __init__(self, pool_bytes: int, held=()):
        self.nbytes, self.held = pool_bytes, list(held)


class _Memory(CudaMemory):
    def __init__(self):
        self._init_memory(staging_bytes=0)


def _buffer(ptr: int, size: int) -> _Array:
    return _Array(_Allocation(ptr, size))


def test_workspace_is_scratch_rope_tables_and_graph_pools():
    m = _Memory()
    scratch, cos, sin = _buffer(0x1000, 4096), _buffer(0x3000, 512), _buffer(0x4000, 512)
    m._workspace["scratch"] = scratch
    m._rope_tables["rope"] = (128, cos, sin)
    m._workspace["decode_graph_0"] = _Graph(10_000, held=[scratch.view(1024), cos, sin])
    assert m._workspace_bytes() == 4096 + 512 + 512 + 10_000


def test_a_replaced_buffer_a_graph_still_reads_counts_until_the_graph_goes():
    m = _Memory()
    old = _buffer(0x1000, 4096)
    graph = _Graph(10_000, held=[old.view(2048), old])
    m._workspace["decode_graph_0"] = graph
    m._workspace["scratch"] = _buffer(0x9000, 16384)              # the scratch grew after the capture
    assert m._workspace_bytes() == 16384 + 10_000 + 4096
    m._workspace["prefill_graph_1"] = _Graph(20_000, held=[old])   # a second graph reading it: counted once
    assert m._workspace_bytes() == 16384 + 10_000 + 20_000 + 4096
    del m._workspace["decode_graph_0"], m._workspace["prefill_graph_1"]    # the graphs released
    assert m._workspace_bytes() == 16384


def test_a_grown_rope_table_held_by_a_graph_counts():
    m = _Memory()
    old_cos, old_sin = _buffer(0x1000, 512), _buffer(0x2000, 512)
    m._workspace["decode_graph_0"] = _Graph(1000, held=[old_cos, old_sin])
    m._rope_tables["rope"] = (2048, _buffer(0x5000, 8192), _buffer(0x7000, 8192))
    assert m._workspace_bytes() == 1000 + 2 * 8192 + 2 * 512


def test_objects_that_are_not_device_arrays_are_not_counted():
    graph = _Graph(100, held=[object(), types.SimpleNamespace(data=None)])
    assert replaced_but_held_bytes([graph]) == 0


class _Pool:
    """A graph's private pool: records when its cached blocks go back to the device."""

    def __init__(self):
        self.freed = 0

    def free_all_blocks(self):
        self.freed += 1


def _graph_state(graph, name):
    return types.SimpleNamespace(graph=graph, name=name, pool=_Pool(), stale=False)


def test_releasing_cached_memory_frees_released_graphs_pools_but_never_a_live_graphs():
    """A buffer of a capture still referenced when its graph was released goes back to that graph's pool when
    it is freed; release_cached_memory returns it to the device. A captured graph's free blocks are the
    buffers its kernels use at every replay: they stay."""
    from worker.backend.cuda_graph import DecodeGraphs

    m = _Memory()
    m.pool = _Pool()
    m.graphs = DecodeGraphs(m)
    captured = _graph_state(object(), "decode_graph:0")
    capturing = _graph_state(None, "decode_graph:1")
    released = _graph_state(None, None)
    for key, g in (("a", captured), ("b", capturing), ("c", released)):
        m.graphs._shapes[key] = g
    m.release_cached_memory()
    assert (captured.pool.freed, capturing.pool.freed, released.pool.freed, m.pool.freed) == (0, 0, 1, 1)


def test_rope_tables_are_persistent_allocations_filled_with_the_angles():
    """RoPE tables are allocated like the scratch buffers (CudaMemory._persistent: the process pool, never the
    private pool of a graph being captured), sized for what a capture needs, and hold rope_cos_sin's values."""
    import numpy as np

    from worker.backend.cuda import CudaBackend
    from worker.config import RopeConfig
    from worker.rope import rope_cos_sin

    class _Table:
        def __init__(self, shape):
            self.shape, self.values = shape, None

        def set(self, host):
            self.values = host

    allocations = []

    def persistent(what, shape, dtype):
        allocations.append((what, tuple(shape), np.dtype(dtype)))
        return _Table(tuple(shape))

    backend = types.SimpleNamespace(_rope_tables={}, _persistent=persistent,
                                    graphs=types.SimpleNamespace(positions_needed=3000))
    rope = RopeConfig(dim=16)
    n, cos, sin = CudaBackend._rope_table(backend, rope, 10)
    assert n == 3000 and [a[1:] for a in allocations] == [((3000, 8), np.float32)] * 2
    want_cos, want_sin = rope_cos_sin(np.arange(3000), rope)
    np.testing.assert_array_equal(cos.values, want_cos)
    np.testing.assert_array_equal(sin.values, want_sin)
    assert CudaBackend._rope_table(backend, rope, 2000) == (n, cos, sin) and len(allocations) == 2   # kept
