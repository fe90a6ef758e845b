"""LT-015/LT-016 attention kernels without a GPU: worker/backend/kernels/attention.cu compiled for the
host by the system C++ compiler, each CUDA thread of a block run as a host fiber, one warp at a time (__syncthreads and
the warp shuffles are barriers over shared slots; blocks run one after another in a shuffled order,
so the decode kernel's last-block merge sees its tickets arrive in any order).

The same source text the GPU compiles, so a wrong index, mask, tile bound, RoPE pair, split merge
or int8 side output fails here, on any machine with g++, against the NumPy reference
(worker/backend/numpy.py, rope= meaning rotate-then-attend). Thresholds: those of the GPU rows
attention_f32kv / attention_f16kv (stories/foundation/_cuda_conformance.py). The GPU itself is
checked by the conformance tests (test_lt019_kernel_unit_tests.py). Skipped where g++ is missing.
"""
from __future__ import annotations

import ctypes
import math
import re
import shutil

import numpy as np
import pytest

from fixtures.paths import REPO_ROOT
from stories.foundation._cuda_conformance import THRESHOLDS, nmse
from stories.llama._host_cuda import THREADED_LAUNCH, THREADED_PRELUDE, build_host_library, device_function
from worker.backend.kernels.attention import decode_grid, decodes, prefill_tile
from worker.backend.numpy import NumpyBackend
from worker.config import RopeConfig
from worker.rope import rope_cos_sin

pytestmark = [pytest.mark.story("LT-015", "LT-016"),
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed on this machine")]

KERNELS = REPO_ROOT / "worker" / "backend" / "kernels"
REF = NumpyBackend()

# Host stand-ins for the CUDA built-ins attention.cu uses: THREADED_PRELUDE's (shared memory is a
# function-local static, one block runs at a time; a shuffle is: barrier, publish, barrier, read).
_PRELUDE = THREADED_PRELUDE + "#include <math.h>\n"

_ENTRIES = r"""
#define HOST_PARAMS const float* q, const float* k_new, const float* v_new, void* k_cache, void* v_cache, \
    const float* sinks, float* out, const float* rope_cos, const float* rope_sin, int rope_dim, int rope_neox, \
    int T, int H, int KVH, int hd, int start_pos, const int* start_pos_dev, int window, float scale_log2, \
    const unsigned long long* kv_table, int layer
#define HOST_ARGS q, k_new, v_new, k_cache, v_cache, sinks, out, rope_cos, rope_sin, rope_dim, rope_neox, \
    T, H, KVH, hd, start_pos, start_pos_dev, window, scale_log2, kv_table, layer
#define HOST_ENTRIES(kvt)                                                                              \
extern "C" void host_prefill_##kvt(HOST_PARAMS, unsigned queries, unsigned gx, unsigned threads,       \
                                   unsigned seed) {                                                     \
    if (hd <= 64 && queries == 32) launch(gx, 1, threads, seed, [=] { attention_prefill_q32_##kvt(HOST_ARGS); }); \
    else if (hd <= 64) launch(gx, 1, threads, seed, [=] { attention_prefill_##kvt(HOST_ARGS); });        \
    else if (hd <= 128) launch(gx, 1, threads, seed, [=] { attention_prefill_d128_##kvt(HOST_ARGS); });  \
    else launch(gx, 1, threads, seed, [=] { attention_prefill_d256_##kvt(HOST_ARGS); });                 \
}                                                                                                       \
extern "C" void host_decode_##kvt(HOST_PARAMS, float* part, int* counters, i8* xq, float4* xds, int terms, \
                                  unsigned splits, unsigned groups, unsigned seed) {                    \
    launch(splits, groups, 32 * ATT_DECODE_WARPS, seed,                                                \
           [=] { attention_decode_##kvt(HOST_ARGS, part, counters, xq, xds, terms); });                  \
}
HOST_ENTRIES(f16)
HOST_ENTRIES(f32)
"""


@pytest.fixture(scope="module")
def host_attention(tmp_path_factory):
    body = re.sub(r'^#include "[^"]+"\s*$', "", (KERNELS / "attention.cu").read_text(), flags=re.M)
    helpers = "".join(device_function(KERNELS / "common.cuh", n) for n in ("warp_sum", "warp_max"))
    helpers += device_function(KERNELS / "vecdot.cuh", "quantize_block_warp")
    return build_host_library(_PRELUDE + helpers + body + THREADED_LAUNCH + _ENTRIES,
                              tmp_path_factory.mktemp("attention"), "attention_host", timeout=600)


def _ptr(a: np.ndarray | None):
    return ctypes.c_void_p(a.ctypes.data if a is not None else 0)


def _run_kernel(lib, *, q, k, v, kc, vc, sinks, start, window, rope, T, H, KVH, hd, n_ctx, seed,
                from_device, q8_terms=0, via_table=False, capacity=None):
    """out [T, H*hd] from the host build of the kernel the backend would launch (kernels/attention.py).
    via_table: the cache comes as layer 1 of a 3-layer address table (as in a captured graph), the
    k_cache / v_cache arguments and the table's other layers being NaN decoys that must stay untouched.
    capacity: the positions the launch is sized for (a graph captured on a larger cache), n_ctx if None."""
    kvt = "f16" if kc.dtype == np.float16 else "f32"
    out = np.full((T, H * hd), np.nan, np.float32)
    capacity = capacity or n_ctx
    table, layer, decoys = None, 0, []
    if via_table:
        decoys = [np.full_like(kc, np.nan) for _ in range(4)]
        table = np.array([a.ctypes.data for a in (decoys[0], decoys[1], kc, vc, decoys[2], decoys[3])], np.uint64)
        layer, kc, vc = 1, decoys[0], decoys[1]
    if rope is not None:
        cos, sin = (np.ascontiguousarray(t) for t in rope_cos_sin(np.arange(capacity), rope))
        rope_args = [_ptr(cos), _ptr(sin), ctypes.c_int(rope.dim), ctypes.c_int(rope.style == "neox")]
    else:
        cos = sin = None
        rope_args = [_ptr(None), _ptr(None), ctypes.c_int(0), ctypes.c_int(0)]
    dev_start = np.array([start], np.int32)
    args = [_ptr(q), _ptr(k), _ptr(v), _ptr(kc), _ptr(vc), _ptr(sinks), _ptr(out), *rope_args,
            ctypes.c_int(T), ctypes.c_int(H), ctypes.c_int(KVH), ctypes.c_int(hd),
            ctypes.c_int(-12345 if from_device else start), _ptr(dev_start if from_device else None),
            ctypes.c_int(window), ctypes.c_float(1.0 / math.sqrt(hd) * math.log2(math.e)),
            _ptr(table), ctypes.c_int(layer)]
    xq = xds = None
    if decodes(T, hd):
        splits, groups = decode_grid(capacity, T, H, KVH, hd)
        part = np.full(H * splits * T * (hd + 2), np.nan, np.float32)
        counters = np.zeros(max(groups, 64), np.int32)
        if q8_terms:
            xq = np.zeros(2 * T * H * hd, np.int8)
            xds = np.zeros((T * H * hd // 32, 4), np.float32)
        getattr(lib, f"host_decode_{kvt}")(*args, _ptr(part), _ptr(counters), _ptr(xq), _ptr(xds),
                                           ctypes.c_int(q8_terms), ctypes.c_uint(splits), ctypes.c_uint(groups),
                                           ctypes.c_uint(seed))
        assert not counters.any(), "the merging blocks left a ticket counter non-zero"
    else:
        queries, threads = prefill_tile(hd, T)
        getattr(lib, f"host_prefill_{kvt}")(*args, ctypes.c_uint(queries), ctypes.c_uint(-(-T // queries) * H),
                                            ctypes.c_uint(threads),
                                            ctypes.c_uint(seed))
    for decoy in decoys:
        assert np.isnan(decoy.astype(np.float32)).all(), "the kernel wrote past the table's layer"
    return out, xq, xds


def _case(lib, seed, T, start, KVH, group, hd, window=0, sinks=False, kv_dtype=np.float16, rope=None,
          from_device=False, q8_terms=0, n_ctx=None, via_table=False, capacity=None):
    rng = np.random.default_rng(seed)
    H = KVH * group
    n_ctx = n_ctx or start + T + int(rng.integers(0, 40))
    ref_cache = REF.new_kv_cache(1, n_ctx, KVH, hd)
    kc = np.zeros((n_ctx, KVH, hd), kv_dtype)
    vc = np.zeros((n_ctx, KVH, hd), kv_dtype)
    if start:                               # an earlier chunk, already in both caches
        old_k = rng.standard_normal((start, KVH, hd)).astype(kv_dtype)
        old_v = rng.standard_normal((start, KVH, hd)).astype(kv_dtype)
        kc[:start], vc[:start] = old_k, old_v
        ref_cache.k[0][:start], ref_cache.v[0][:start] = old_k.astype(np.float32), old_v.astype(np.float32)
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k = rng.standard_normal((T, KVH, hd)).astype(np.float32)
    v = rng.standard_normal((T, KVH, hd)).astype(np.float32)
    sink = (rng.standard_normal(H) * 2).astype(np.float32) if sinks else None
    out, xq, xds = _run_kernel(lib, q=q, k=k, v=v, kc=kc, vc=vc, sinks=sink, start=start, window=window, rope=rope,
                               T=T, H=H, KVH=KVH, hd=hd, n_ctx=n_ctx, seed=seed, from_device=from_device,
                               q8_terms=q8_terms, via_table=via_table, capacity=capacity)
    ref = REF.attention(q, k, v, ref_cache, 0, start, sliding_window=window, sinks=sink, rope=rope)
    stored = ref_cache.k[0][start:start + T].astype(kv_dtype)       # rotated keys when rope is given
    np.testing.assert_array_equal(kc[start:start + T], stored)     # the step's rows went to the right place
    np.testing.assert_array_equal(vc[start:start + T], v.astype(kv_dtype))
    return out, ref, xq, xds


def _threshold(kv_dtype) -> float:
    return THRESHOLDS["attention_f16kv" if kv_dtype == np.float16 else "attention_f32kv"]


CASES = [(1, 0), (1, 77), (2, 5), (4, 300), (5, 0), (64, 0), (70, 33), (300, 0)]   # (T, start)
GROUPS = [1, 2, 7, 8]                     # query heads a KV head (MHA, GQA)


@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("hd", [64, 80, 128, 256])
def test_attention_kernels_match_the_reference(host_attention, kv_dtype, case, hd):
    """Decode (T <= 4) and prefill shapes, a second chunk on a filled cache; the group cycles with the case."""
    (T, start), group = CASES[case], GROUPS[(case + hd // 16) % len(GROUPS)]
    out, ref, _, _ = _case(host_attention, 1000 * T + start + hd + group, T, start, 2 if group < 7 else 1, group,
                           hd, kv_dtype=kv_dtype)
    assert nmse(out, ref) <= _threshold(kv_dtype), f"T={T} start={start} group={group}: NMSE {nmse(out, ref):.3e}"


@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("start, window, sinks", [(0, 0, False), (37, 300, True)])
def test_long_prefill_takes_the_64_query_tiles(host_attention, kv_dtype, start, window, sinks):
    """Past SHORT_PREFILL tokens, 64-wide heads take the 64 x 32 tiles (shorter inputs: 32 x 32)."""
    from worker.backend.kernels.attention import SHORT_PREFILL

    T = SHORT_PREFILL + 77
    assert prefill_tile(64, T)[0] == 64
    out, ref, _, _ = _case(host_attention, start + 5, T, start, 1, 2, 64, window=window, sinks=sinks,
                           kv_dtype=kv_dtype)
    assert nmse(out, ref) <= _threshold(kv_dtype), f"NMSE {nmse(out, ref):.3e}"


@pytest.mark.parametrize("T, start", [(1, 200), (3, 40), (37, 0), (20, 90)])
@pytest.mark.parametrize("window", [1, 7, 64])
@pytest.mark.parametrize("sinks", [False, True])
def test_sliding_window_and_sinks(host_attention, T, start, window, sinks):
    out, ref, _, _ = _case(host_attention, T + start + window, T, start, 2, 4, 64, window=window, sinks=sinks,
                           kv_dtype=np.float32)
    assert nmse(out, ref) <= _threshold(np.float32), f"NMSE {nmse(out, ref):.3e}"


@pytest.mark.parametrize("style", ["neox", "normal"])
@pytest.mark.parametrize("dim_part", [1.0, 0.5])
@pytest.mark.parametrize("T, start", [(1, 50), (4, 9), (5, 0), (40, 17)])
@pytest.mark.parametrize("hd", [64, 128])
def test_fused_rope_rotates_like_rope_then_attention(host_attention, style, dim_part, T, start, hd):
    rope = RopeConfig(dim=int(hd * dim_part), base=10000.0, style=style)
    out, ref, _, _ = _case(host_attention, T + start + hd, T, start, 2, 3, hd, rope=rope, kv_dtype=np.float32,
                           from_device=True)
    assert nmse(out, ref) <= _threshold(np.float32), f"NMSE {nmse(out, ref):.3e}"


@pytest.mark.parametrize("T, start", [(1, 0), (1, 1000), (2, 1500), (4, 511)])
def test_decode_splits_merge_long_contexts(host_attention, T, start):
    """Several key chunks a head (up to MAX_SPLITS), merged by whichever block finishes last."""
    out, ref, _, _ = _case(host_attention, start, T, start, 3, 3, 64, from_device=True)
    assert nmse(out, ref) <= _threshold(np.float16), f"NMSE {nmse(out, ref):.3e}"


# (group, KVH, hd, T, start, n_ctx, window, sinks): one block serves up to decode_rows(hd) (head, token)
# rows of a KV group; the grid's splits follow n_ctx, the active chunks the position.
DECODE_GEOMETRY = [
    (1, 4, 64, 1, 25, 256, 0, False),          # MHA, one chunk: the block writes the output itself
    (3, 3, 64, 1, 25, 8192, 0, False),         # SmolLM2 heads early in a long cache: 1 of 32 chunks active
    (7, 2, 64, 1, 1000, 1024, 0, False),       # Qwen2.5 heads: 4 chunks merged
    (7, 2, 64, 4, 1000, 1100, 0, True),        # 28 rows: 4 row groups, each merged over 4 chunks
    (2, 2, 80, 2, 700, 4096, 0, True),         # hd 80 in the 128 class (idle lanes past hd)
    (8, 1, 256, 3, 300, 8192, 0, True),        # 24 rows in 6 groups of 4
    (8, 2, 64, 1, 5000, 5200, 128, True),      # GPT-OSS sliding layer: one chunk covers the window
    (8, 1, 64, 2, 3000, 3100, 1000, True),     # a window spread over several chunks
    (1, 2, 128, 4, 508, 512, 0, False),        # MHA, 4 tokens in one row group
    (3, 3, 64, 1, 16500, 16501, 0, False),     # 64 chunks (MAX_SPLITS) merged
]


@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("geometry", range(len(DECODE_GEOMETRY)))
def test_decode_geometry(host_attention, kv_dtype, geometry):
    group, KVH, hd, T, start, n_ctx, window, sinks = DECODE_GEOMETRY[geometry]
    rope = RopeConfig(dim=hd, base=10000.0, style="neox") if geometry % 2 else None
    out, ref, _, _ = _case(host_attention, geometry, T, start, KVH, group, hd, window=window, sinks=sinks,
                           kv_dtype=kv_dtype, rope=rope, from_device=geometry % 3 == 0, n_ctx=n_ctx)
    assert nmse(out, ref) <= _threshold(kv_dtype), f"{DECODE_GEOMETRY[geometry]}: NMSE {nmse(out, ref):.3e}"


# (T, start, hd, n_ctx, capacity): every kernel (decode, each prefill tile shape), the cache found in
# the address table; a graph captured on a larger cache replays with the grid and RoPE tables of its
# capacity over a smaller cache (cuda_graph.py).
TABLE_CASES = [(1, 40, 64, 64, 64), (1, 1000, 64, 1100, 8192), (4, 300, 128, 310, 4096), (3, 20, 256, 30, 1024),
               (5, 0, 64, 256, 256), (37, 10, 64, 60, 4096), (40, 17, 128, 64, 512), (20, 3, 256, 30, 30),
               (1100, 0, 64, 1101, 2048)]


@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("case", range(len(TABLE_CASES)))
def test_every_kernel_reads_its_cache_from_the_address_table(host_attention, kv_dtype, case):
    T, start, hd, n_ctx, capacity = TABLE_CASES[case]
    rope = RopeConfig(dim=hd, base=10000.0, style="neox") if case % 2 else None
    out, ref, _, _ = _case(host_attention, 50 + case, T, start, 2, 3, hd, kv_dtype=kv_dtype, rope=rope,
                           from_device=True, n_ctx=n_ctx, via_table=True, capacity=capacity)
    assert nmse(out, ref) <= _threshold(kv_dtype), f"{TABLE_CASES[case]}: NMSE {nmse(out, ref):.3e}"


@pytest.mark.parametrize("terms", [1, 2])
@pytest.mark.parametrize("T, group, hd", [(1, 2, 64), (4, 2, 64), (3, 7, 128), (2, 8, 256)])
def test_decode_writes_the_int8_blocks_of_its_output(host_attention, terms, T, group, hd):
    out, ref, xq, xds = _case(host_attention, terms + 10 * T, T, 600, 2, group, hd, q8_terms=terms)
    assert nmse(out, ref) <= _threshold(np.float16)
    blocks = out.reshape(-1, 32).astype(np.float64)
    d0 = xds[:, 0:1].astype(np.float64)
    first = xq[: out.size].reshape(-1, 32).astype(np.float64) * d0
    assert np.all(np.abs(first - blocks) <= 0.5 * d0 + 1e-6), "the first int8 term is not round(x / d0)"
    np.testing.assert_allclose(xds[:, 2], blocks.sum(axis=1), rtol=1e-4, atol=1e-4)
    if terms == 2:
        second = xq[out.size:].reshape(-1, 32).astype(np.float64) * xds[:, 1:2]
        assert np.abs(first + second - blocks).max() <= np.abs(blocks).max() / 127 / 254 * 1.01 + 1e-6


@pytest.mark.parametrize("constant, macro", [("ATT_MAX_HEAD_DIM", "ATT_MAX_HEAD_DIM"),
                                             ("DECODE_MAX_T", "ATT_DECODE_MAX_T"), ("DECODE_WARPS", "ATT_DECODE_WARPS"),
                                             ("MAX_SPLITS", "ATT_MAX_SPLITS"), ("MIN_CHUNK", "ATT_DECODE_MIN_CHUNK"),
                                             ("DECODE_ROWS", "ATT_DECODE_ROWS"),
                                             ("DECODE_ROWS_FEW", "ATT_DECODE_ROWS_FEW")])
def test_launcher_limits_match_the_kernel(constant, macro):
    from worker.backend.kernels import attention as launcher

    m = re.search(rf"^#define\s+{macro}\s+(\d+)", (KERNELS / "attention.cu").read_text(), flags=re.M)
    assert m and int(m.group(1)) == getattr(launcher, constant)


# (choice, (group, KVH, hd, T, start, n_ctx, window, sinks)): every row count a block may take
# (M0_CUDA_ATT_DECODE_ROWS), and short contexts in long caches, whose one active chunk lets the grid's split
# blocks share a row group's rows; MHA, GQA groups of 3, 7, 8, hd 80 and 256, several tokens, windows, sinks.
ROW_CASES = [
    ("1", (7, 2, 64, 1, 25, 256, 0, False)),          # Qwen2.5, a short cache: a row a block
    ("2", (7, 2, 64, 1, 25, 256, 0, False)),
    ("auto", (7, 2, 64, 1, 40, 4352, 0, False)),      # a short context in a long cache: split blocks take rows
    ("group", (8, 2, 64, 1, 30, 4352, 0, True)),      # GPT-OSS heads, whole groups shared by 8 split blocks
    ("auto", (8, 2, 64, 1, 5000, 5200, 128, True)),   # a sliding layer: one chunk covers the window
    ("1", (8, 1, 64, 2, 3000, 3100, 1000, True)),     # two tokens (4 rows a block at least), merged chunks
    ("4", (3, 3, 64, 1, 25, 8192, 0, False)),
    ("8", (7, 2, 64, 4, 1000, 1100, 0, True)),        # 28 rows in blocks of 8, merged over 4 chunks
    ("auto", (7, 2, 64, 4, 20, 4096, 0, False)),      # four tokens, short context, long cache: blocks of 4
    ("2", (2, 2, 80, 2, 700, 4096, 0, True)),         # hd 80
    ("1", (8, 1, 256, 3, 300, 8192, 0, True)),        # hd 256, two chunks merged
    ("auto", (8, 1, 256, 1, 40, 8192, 0, True)),      # hd 256, short: 4-row groups shared by 4 blocks
    ("2", (1, 4, 64, 1, 0, 256, 0, False)),           # MHA, the first token
    ("group", (7, 2, 64, 1, 1000, 1024, 0, False)),   # the earlier geometry, 4 chunks merged
]


@pytest.mark.parametrize("choice, geometry", ROW_CASES)
def test_decode_rows_a_block_as_chosen(host_attention, monkeypatch, choice, geometry):
    """The kernel reads its rows a block back from the grid (and the active chunks from the position): any
    choice gives the reference's output."""
    from worker.backend.kernels import attention as launcher

    monkeypatch.setattr(launcher, "DECODE_ROWS_CHOICE", choice)
    group, KVH, hd, T, start, n_ctx, window, sinks = geometry
    rope = RopeConfig(dim=hd, base=10000.0, style="neox") if start % 2 == 0 else None
    out, ref, _, _ = _case(host_attention, 7 + start, T, start, KVH, group, hd, window=window, sinks=sinks,
                           kv_dtype=np.float16, rope=rope, from_device=True, n_ctx=n_ctx)
    assert nmse(out, ref) <= _threshold(np.float16), f"{choice} {geometry}: NMSE {nmse(out, ref):.3e}"
