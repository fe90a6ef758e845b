"""LT-015/LT-016 the attention launcher (worker/backend/kernels/attention.py) on the CPU: which kernel a
call takes, its grid and arguments, the split count (a function of the cache size only, so a captured
decode graph serves every position), and the merge tickets' buffer (zeroed once, and zeroed again after
a capture, whose memset runs only with the graph). The kernels are checked by
test_lt016_attention_kernels_on_the_host.py and, on the GPU, test_lt016_flash_attention_gpu.py."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from worker.backend.cuda_runtime import NULL
from worker.backend.kernels import attention as launcher

pytestmark = pytest.mark.story("LT-015", "LT-016")


class _Graphs:
    def __init__(self):
        self.held = []

    def hold(self, *arrays):
        self.held.extend(arrays)


class _Buffer(np.ndarray):
    """A host array that counts the fills (memsets) made on it."""

    fills = 0

    def fill(self, value):
        type(self).fills += 1
        super().fill(value)


class _Backend:
    """The parts of CudaBackend the launcher uses, recording launches instead of running them."""

    def __init__(self):
        self._workspace = {}
        self.graphs = _Graphs()
        self.launches = []

    def _launch(self, module, name, grid, block, args):
        self.launches.append((module, name, grid, block, args))

    def _scratch(self, name, n):
        buf = self._workspace.get(name)
        if buf is None or buf.size < n:
            buf = self._workspace[name] = np.zeros(n, np.float32)
        return buf[:n]

    def _allocate(self, what, shape, dtype):
        return np.full(shape, 7, dtype).view(_Buffer)


@pytest.fixture(autouse=True)
def _host_allocations(monkeypatch):
    monkeypatch.setattr(launcher, "process_allocations", contextlib.nullcontext)
    _Buffer.fills = 0


def _call(k, T, hd, n_ctx=4096, start_dev=NULL, q8=None, rope=None, H=14, KVH=2, **table):
    launcher.attention(k, "f16", "q", "k", "v", "kc", "vc", NULL, "out", T, H, KVH, hd, 100, start_dev, 0, 0.125,
                       n_ctx=n_ctx, rope=rope, q8=q8, **table)
    return k.launches[-1]


@pytest.mark.parametrize("T, hd", [(1, 64), (4, 128), (300, 64), (2048, 64), (300, 80), (300, 256)])
def test_every_kernel_takes_the_kv_table_and_the_layer(T, hd):
    """A captured graph's attention reads the cache's addresses from the backend's table (cuda_graph.py)."""
    args = _call(_Backend(), T, hd, kv_table="table", layer=7)[4]
    assert args[3:5] == ("kc", "vc") and args[19] == "table" and int(args[20]) == 7


@pytest.mark.parametrize("T, hd, name, grid, block", [
    (1, 64, "attention_decode_f16", (16, 2), 256),        # 7 heads a KV head: one block a group
    (4, 128, "attention_decode_f16", (16, 2 * 4), 256),   # 28 rows a group: 4 blocks of 8
    (4, 256, "attention_decode_f16", (16, 2 * 7), 256),   # 4 rows a block at hd 256
    (3, 20, "attention_prefill_q32_f16", 14, 128),      # hd % 8 != 0: the tiled kernel takes it
    (5, 64, "attention_prefill_q32_f16", 14, 128),
    (300, 64, "attention_prefill_q32_f16", 10 * 14, 128),
    (2048, 64, "attention_prefill_f16", 32 * 14, 128),
    (300, 80, "attention_prefill_d128_f16", 10 * 14, 128),
    (300, 256, "attention_prefill_d256_f16", 19 * 14, 64),
])
def test_the_kernel_a_call_takes(T, hd, name, grid, block):
    module, launched, g, b, args = _call(_Backend(), T, hd)
    assert (module, launched, g, b) == ("attention.cu", name, grid, block)
    assert len(args) == (26 if "decode" in name else 21)             # the KV table and the layer included
    assert float(args[18]) == pytest.approx(0.125 * np.log2(np.e))     # scores in base 2
    assert args[19] is NULL and int(args[20]) == 0                     # no table: the kernel takes kc / vc


def test_splits_depend_on_the_cache_size_only():
    assert [launcher.decode_splits(n) for n in (1, 256, 257, 2048, 8192, 16384, 10**6)] == [1, 1, 2, 8, 32, 64, 64]
    k = _Backend()
    grids = {_call(k, 1, 64, n_ctx=3000)[2] for _ in range(3)}
    assert grids == {(12, 2)}


@pytest.mark.parametrize("H, KVH, T, hd, rows, groups", [
    (9, 3, 1, 64, 4, 3), (14, 2, 1, 64, 8, 2), (64, 8, 1, 64, 8, 8), (64, 8, 4, 64, 8, 32), (8, 8, 1, 128, 4, 8),
    (8, 8, 4, 128, 4, 8), (16, 8, 3, 64, 8, 8), (32, 4, 2, 256, 4, 16)])
def test_a_decode_block_serves_the_rows_of_one_kv_group(H, KVH, T, hd, rows, groups):
    """K/V rows are read once for the group's query heads: KV heads x ceil(group x T / rows a block), with
    blocks of 4 rows where a group has 4 or fewer (every row of a block is computed) or heads are 256 wide."""
    assert launcher.decode_rows(hd, T * H // KVH) == rows
    assert launcher.decode_grid(1024, T, H, KVH, hd) == (4, groups)


def test_rope_tables_and_int8_output_reach_the_decode_kernel():
    k = _Backend()
    args = _call(k, 1, 64, rope=("cos", "sin", 32, True), q8=("xq", "xds", 2))[4]
    assert args[7:11] == ("cos", "sin", 32, 1) and args[23:26] == ("xq", "xds", 2)
    with pytest.raises(ValueError):
        _call(k, 5, 64, q8=("xq", "xds", 2))               # the tiled kernel writes no int8 blocks


def test_merge_tickets_are_zeroed_once_and_again_after_a_capture():
    k = _Backend()
    _call(k, 1, 64, start_dev="captured start")           # first use inside a capture: a memset in the graph
    counters = k._workspace[launcher.COUNTERS]
    assert _Buffer.fills == 1 and counters in k.graphs.held
    _call(k, 1, 64)                                      # the next eager call zeroes it for real
    assert _Buffer.fills == 2 and not counters.any()
    _call(k, 1, 64)
    _call(k, 1, 64, start_dev="captured start")
    assert _Buffer.fills == 2                            # the kernels leave it at zero from then on
    _call(k, 1, 64, H=200, KVH=100)                       # more row groups: a larger buffer, zeroed again
    assert _Buffer.fills == 3 and k._workspace[launcher.COUNTERS].size >= 100


@pytest.fixture(autouse=True)
def _whole_groups(monkeypatch):
    """The tests above describe the "group" geometry (M0_CUDA_ATT_DECODE_ROWS=group); those below pick theirs."""
    monkeypatch.setattr(launcher, "DECODE_ROWS_CHOICE", "group")


@pytest.mark.parametrize("n_ctx, T, H, KVH, hd, grid", [
    (256, 1, 14, 2, 64, (1, 14)),      # Qwen2.5, a short cache: one row a block, 14 blocks rather than 2
    (256, 1, 64, 8, 64, (1, 64)),      # GPT-OSS: 64 blocks rather than 8
    (256, 1, 9, 3, 64, (1, 9)),        # SmolLM2
    (4096, 1, 14, 2, 64, (16, 8)),     # 16 splits x 2 KV heads: 2 rows a block make 128 blocks
    (4096, 1, 64, 8, 64, (16, 8)),     # 16 splits x 8 KV heads are 128 blocks already: whole groups
    (256, 4, 14, 2, 64, (1, 14)),      # several tokens: 4 rows a block at least (the kernel's instances)
    (256, 1, 8, 1, 256, (1, 8)),       # hd 256: at most 4 rows a block
])
def test_auto_rows_give_short_contexts_more_blocks(monkeypatch, n_ctx, T, H, KVH, hd, grid):
    """A short context is one key chunk a row group: the step's blocks are its row groups, each a chain of
    steps as long as its rows; "auto" halves the rows a block until the grid has DECODE_TARGET_BLOCKS."""
    monkeypatch.setattr(launcher, "DECODE_ROWS_CHOICE", "auto")
    assert launcher.decode_grid(n_ctx, T, H, KVH, hd) == grid
    assert _call(_Backend(), T, hd, n_ctx=n_ctx, H=H, KVH=KVH)[2] == grid


@pytest.mark.parametrize("choice, T, hd, rows", [("1", 1, 64, 1), ("2", 1, 128, 2), ("8", 1, 64, 8), ("1", 4, 64, 4),
                                                 ("8", 1, 256, 4), ("group", 1, 64, 8), ("group", 1, 256, 4)])
def test_a_chosen_row_count_is_held_to_the_kernels_instances(choice, T, hd, rows):
    """1, 2, 4 or 8 rows a block for one token; 4 or 8 for several; at most 4 for heads 256 wide."""
    assert launcher.decode_rows(hd, 8 * T, T, 1, choice) == rows
