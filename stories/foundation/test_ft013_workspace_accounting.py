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
