"""LT-015/LT-016 attention kernels on the GPU (worker/backend/kernels/attention.cu) against the NumPy reference.

attention_prefill_<kvt> (tiled flash attention, T > 4; _d128_/_d256_ for wider heads) and
attention_decode_<kvt> (a block a (key chunk, KV head, row group), chunks merged by the last block,
T <= 4): decode and prefill lengths, a
second chunk on a filled cache, GQA groups 1/2/7/8 and MHA, head_dim 64/80/128/256, sliding windows,
sinks, RoPE through rope= (both pairings, partial rotary dims, YaRN; rotated inside the decode kernel,
by the rope kernel before a prefill), float16 and float32 caches, the start position read from device
memory, and the decode kernel replayed from a captured CUDA graph at moving positions. NMSE thresholds:
the rows attention_f32kv (1e-9: float32 everywhere, only the summation order differs) and
attention_f16kv (2e-6: the cache holds float16, relative rounding 2^-11) of
stories/foundation/_cuda_conformance.py; the RoPE and graph rows hold the same bounds (the rotation
adds float32 rounding only). The decode kernel's int8 side output must equal quantize_q8 of its float
output bit for bit (the same quantize_block_warp on the same values). Kernel times are measured by
benchmarks/bench_attention.py, never asserted here.

Run on the GPU machine: .venv/bin/python -m pytest -q -p no:cacheprovider -m gpu \
    stories/llama/test_lt016_flash_attention_gpu.py
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from stories.foundation._cuda_conformance import check, cuda_backend, f32_tensor
from worker.backend.cuda_runtime import NULL
from worker.backend.numpy import NumpyBackend
from worker.config import RopeConfig

pytestmark = [pytest.mark.gpu, pytest.mark.story("LT-015", "LT-016", "LT-019")]
REF = NumpyBackend()
GROUPS = [1, 2, 7, 8]


def _backend(kv_dtype: str, checking: bool = True):
    return cuda_backend(poison_outputs=checking, sync_each_op=checking, kv_dtype=kv_dtype)


def _op(kv_dtype: str, what: str = "") -> str:
    return ("attention_f16kv" if kv_dtype == "float16" else "attention_f32kv") + (f":{what}" if what else "")


def _inputs(rng, T, start, KVH, H, hd, kv_dtype, n_ctx):
    old_k = rng.standard_normal((start, KVH, hd)).astype(np.float32)
    old_v = rng.standard_normal((start, KVH, hd)).astype(np.float32)
    if kv_dtype == "float16":                     # what a float16 cache holds, exactly
        old_k, old_v = old_k.astype(np.float16).astype(np.float32), old_v.astype(np.float16).astype(np.float32)
    q = rng.standard_normal((T, H, hd)).astype(np.float32)
    k = rng.standard_normal((T, KVH, hd)).astype(np.float32)
    v = rng.standard_normal((T, KVH, hd)).astype(np.float32)
    return old_k, old_v, q, k, v


def _case(b, kv_dtype, seed, T, start, KVH, group, hd, *, window=0, sinks=False, rope=None):
    """(cuda out, reference out) of one attention call on caches holding `start` earlier positions."""
    rng = np.random.default_rng(seed)
    H = KVH * group
    n_ctx = start + T + int(rng.integers(0, 50))
    old_k, old_v, q, k, v = _inputs(rng, T, start, KVH, H, hd, kv_dtype, n_ctx)
    ref_cache, cache = REF.new_kv_cache(1, n_ctx, KVH, hd), b.new_kv_cache(1, n_ctx, KVH, hd)
    try:
        ref_cache.k[0][:start], ref_cache.v[0][:start] = old_k, old_v
        cache.k[0][:start] = b.cp.asarray(old_k).astype(cache.k[0].dtype)
        cache.v[0][:start] = b.cp.asarray(old_v).astype(cache.v[0].dtype)
        sink_w = f32_tensor(rng.standard_normal(H) * 2, "sinks") if sinks else None
        out = b.to_host(b.attention(b.asarray(q), b.asarray(k), b.asarray(v), cache, 0, start, sliding_window=window,
                                    sinks=b.load_weight(sink_w) if sinks else None, rope=rope))
        ref = REF.attention(q, k, v, ref_cache, 0, start, sliding_window=window,
                            sinks=REF.load_weight(sink_w) if sinks else None, rope=rope)
        stored = b.cp.asnumpy(cache.k[0][start:start + T]).astype(np.float32)
        expect = ref_cache.k[0][start:start + T]                  # rotated when rope is given
        if kv_dtype == "float16":
            expect = expect.astype(np.float16).astype(np.float32)
            np.testing.assert_allclose(stored, expect, rtol=2e-3, atol=1e-6)   # one float16 rounding apart
        else:
            np.testing.assert_allclose(stored, expect, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(b.cp.asnumpy(cache.v[0][start:start + T]).astype(np.float32),
                                      v.astype(np.float16).astype(np.float32) if kv_dtype == "float16" else v)
        return out, ref
    finally:
        b.free_kv_cache(cache)


def _matches(kv_dtype, T, start, hd):
    group = GROUPS[(T + start + hd // 16) % len(GROUPS)]
    KVH = 1 if T >= 300 else 2
    out, ref = _case(_backend(kv_dtype), kv_dtype, T * 7 + start + hd, T, start, KVH, group, hd)
    check(_op(kv_dtype), f"T={T} start={start} H={KVH * group} KV={KVH} hd={hd}", out, ref)


@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
@pytest.mark.parametrize("T", [1, 2, 4, 5, 64, 300])
@pytest.mark.parametrize("start", [0, 129])
@pytest.mark.parametrize("hd", [64, 80, 128, 256])
def test_attention_matches_the_reference(kv_dtype, T, start, hd):
    """Decode and prefill lengths; start > 0 is a second chunk on a filled cache. The group cycles."""
    _matches(kv_dtype, T, start, hd)


@pytest.mark.parametrize("kv_dtype, start, hd", [("float16", 0, 64), ("float32", 129, 64), ("float16", 0, 128),
                                                 ("float32", 0, 256), ("float16", 300, 80)])
def test_attention_matches_the_reference_at_2048_tokens(kv_dtype, start, hd):
    """A long prefill chunk (many key tiles a query tile; the reference's cost bounds the cases)."""
    _matches(kv_dtype, 2048, start, hd)


@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
@pytest.mark.parametrize("T, start", [(1, 3000), (2, 700), (4, 64), (5, 200), (300, 100), (1000, 0)])
@pytest.mark.parametrize("window", [1, 16, 128, 4096])
@pytest.mark.parametrize("sinks", [False, True])
def test_sliding_window_and_sinks(kv_dtype, T, start, window, sinks):
    """GPT-OSS: windows shorter and longer than the context, a sink logit a head (64-dim heads, 8 per KV head)."""
    out, ref = _case(_backend(kv_dtype), kv_dtype, T + start + window, T, start, 2, 8, 64, window=window, sinks=sinks)
    check(_op(kv_dtype), f"T={T} start={start} window={window} sinks={sinks}", out, ref)


ROPES = {
    "neox": RopeConfig(dim=64, base=1000000.0, style="neox"),
    "normal": RopeConfig(dim=64, base=10000.0, style="normal"),
    "neox-partial": RopeConfig(dim=32, base=10000.0, style="neox"),
    "normal-partial": RopeConfig(dim=48, base=10000.0, style="normal"),
    "yarn": RopeConfig(dim=64, base=150000.0, style="neox", scaling="yarn", factor=32.0, original_context=4096,
                       beta_fast=32.0, beta_slow=1.0, truncate=False),
}


@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("T, start", [(1, 0), (1, 517), (3, 40), (4, 2000), (5, 0), (77, 300), (1100, 0)])
def test_fused_rope_equals_rope_then_attention(kv_dtype, rope, T, start):
    """attention(rope=...) against the reference's meaning: rope(q), rope(k), then attention (rotated inside
    the decode kernel for T <= 4, by the rope kernel before a prefill)."""
    window = 128 if rope == "yarn" else 0
    out, ref = _case(_backend(kv_dtype), kv_dtype, T + start, T, start, 2, 7, 64, window=window,
                     sinks=rope == "yarn", rope=ROPES[rope])
    check(_op(kv_dtype, "rope"), f"{rope} T={T} start={start}", out, ref)


@pytest.mark.parametrize("hd", [64, 128])
def test_fused_rope_with_larger_heads(hd):
    rope = RopeConfig(dim=hd, base=10000.0, style="neox")
    for T, start in [(1, 900), (4, 33), (40, 60)]:
        out, ref = _case(_backend("float32"), "float32", T + hd, T, start, 2, 2, hd, rope=rope)
        check(_op("float32", "rope"), f"hd={hd} T={T} start={start}", out, ref)


def _launch_direct(b, kv_dtype, T, H, KVH, hd, start, dev_start, host_start, rng):
    """The launcher called as a captured graph calls it: the start from device memory (host value wrong)."""
    from worker.backend.kernels import attention as kernels

    n_ctx = start + T + 9
    old_k, old_v, q, k, v = _inputs(rng, T, start, KVH, H, hd, kv_dtype, n_ctx)
    ref_cache, cache = REF.new_kv_cache(1, n_ctx, KVH, hd), b.new_kv_cache(1, n_ctx, KVH, hd)
    ref_cache.k[0][:start], ref_cache.v[0][:start] = old_k, old_v
    cache.k[0][:start] = b.cp.asarray(old_k).astype(cache.k[0].dtype)
    cache.v[0][:start] = b.cp.asarray(old_v).astype(cache.v[0].dtype)
    out = b.cp.full((T, H * hd), np.nan, dtype=np.float32)
    kvt = "f16" if kv_dtype == "float16" else "f32"
    kernels.attention(b, kvt, b.asarray(q), b.asarray(k), b.asarray(v), cache.k[0], cache.v[0], NULL, out, T, H, KVH,
                      hd, host_start, dev_start, 0, 1.0 / math.sqrt(hd), n_ctx=n_ctx)
    ref = REF.attention(q, k, v, ref_cache, 0, start)
    b.free_kv_cache(cache)
    return b.to_host(out), ref


@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
@pytest.mark.parametrize("T, start", [(1, 0), (1, 2500), (4, 700), (5, 40), (200, 300)])
def test_start_position_from_device_memory(kv_dtype, T, start):
    b = _backend(kv_dtype)
    dev_start = b.cp.asarray(np.array([start], np.int32))
    out, ref = _launch_direct(b, kv_dtype, T, 9, 3, 64, start, dev_start, -7, np.random.default_rng(start + T))
    check(_op(kv_dtype), f"device start T={T} start={start}", out, ref)


@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
@pytest.mark.parametrize("rope", [None, "neox"])
def test_decode_attention_replays_from_a_captured_graph(kv_dtype, rope):
    """One captured launch serves every step: the position moves in device memory, the split count stays
    (a function of the cache size), and the merge tickets are back at zero after each replay."""
    b = _backend(kv_dtype, checking=False)
    cp = b.cp
    rng = np.random.default_rng(11)
    H, KVH, hd, n_ctx = 14, 2, 64, 3000
    cfg = ROPES[rope] if rope else None
    ref_cache, cache = REF.new_kv_cache(1, n_ctx, KVH, hd), b.new_kv_cache(1, n_ctx, KVH, hd)
    first = 1500
    old_k, old_v, *_ = _inputs(rng, 0, first, KVH, H, hd, kv_dtype, n_ctx)
    ref_cache.k[0][:first], ref_cache.v[0][:first] = old_k, old_v
    cache.k[0][:first] = cp.asarray(old_k).astype(cache.k[0].dtype)
    cache.v[0][:first] = cp.asarray(old_v).astype(cache.v[0].dtype)
    q_dev, k_dev, v_dev = (cp.zeros((1, n, hd), dtype=np.float32) for n in (H, KVH, KVH))
    scratch = b.new_kv_cache(1, n_ctx, KVH, hd)                      # eager first: tables, workspace, compile
    b.attention(q_dev, k_dev, v_dev, scratch, 0, first + 40, rope=cfg)
    b.synchronize()                                                # the graph's stream does not wait for it
    b.free_kv_cache(scratch)
    start_dev = cp.zeros(1, dtype=np.int32)
    b.graphs.device_start = lambda start_pos: start_dev            # as a capture answers (cuda_graph.py)
    stream = cp.cuda.Stream(non_blocking=True)
    try:
        with stream:
            stream.begin_capture()
            out_dev = b.attention(q_dev, k_dev, v_dev, cache, 0, first, rope=cfg)
            graph = stream.end_capture()
        for step, pos in enumerate(range(first, first + 12)):
            q, k, v = (rng.standard_normal((1, n, hd)).astype(np.float32) for n in (H, KVH, KVH))
            with stream:
                for dev, host in ((q_dev, q), (k_dev, k), (v_dev, v), (start_dev, np.array([pos], np.int32))):
                    dev.set(host, stream=stream)
                graph.launch(stream)
            stream.synchronize()
            ref = REF.attention(q, k, v, ref_cache, 0, pos, rope=cfg)
            check(_op(kv_dtype, "graph"), f"replay {step} at {pos} rope={rope}", cp.asnumpy(out_dev), ref)
            counters = b._workspace["attention_split_counters"]
            assert not cp.asnumpy(counters).any(), "a merge ticket counter was left non-zero"
    finally:
        del b.graphs.device_start
        b.free_kv_cache(cache)


# -- decode geometry: row groups, splits of long caches, the int8 side output ---------------------------

# (H, KVH, hd, T, start, n_ctx, window, sinks): the models' shapes (SmolLM2, Qwen2.5, GPT-OSS full and
# sliding layers) and the kernel's limits: many chunks in the grid with one active, all MAX_SPLITS
# chunks merged, several row groups a KV head, hd 80/128/256.
DECODE_GEOMETRY = [
    (9, 3, 64, 1, 25, 256, 0, False),
    (9, 3, 64, 1, 25, 32768, 0, False),
    (14, 2, 64, 1, 1000, 1024, 0, False),
    (14, 2, 64, 4, 8000, 8192, 0, False),
    (14, 2, 64, 1, 32000, 32768, 0, False),
    (64, 8, 64, 1, 20000, 32768, 0, True),
    (64, 8, 64, 1, 20000, 32768, 128, True),
    (64, 8, 64, 3, 300, 4096, 128, True),
    (8, 8, 128, 2, 5000, 8192, 0, False),
    (32, 4, 256, 4, 3000, 4096, 0, True),
    (12, 2, 80, 1, 2000, 2048, 0, False),
]


@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
@pytest.mark.parametrize("geometry", range(len(DECODE_GEOMETRY)))
def test_decode_geometry(kv_dtype, geometry):
    H, KVH, hd, T, start, n_ctx, window, sinks = DECODE_GEOMETRY[geometry]
    b = _backend(kv_dtype)
    rng = np.random.default_rng(geometry)
    old_k, old_v, q, k, v = _inputs(rng, T, start, KVH, H, hd, kv_dtype, n_ctx)
    rope = RopeConfig(dim=hd, base=10000.0, style="neox") if geometry % 2 else None
    ref_cache, cache = REF.new_kv_cache(1, n_ctx, KVH, hd), b.new_kv_cache(1, n_ctx, KVH, hd)
    try:
        ref_cache.k[0][:start], ref_cache.v[0][:start] = old_k, old_v
        cache.k[0][:start] = b.cp.asarray(old_k).astype(cache.k[0].dtype)
        cache.v[0][:start] = b.cp.asarray(old_v).astype(cache.v[0].dtype)
        sink_w = f32_tensor(rng.standard_normal(H) * 2, "sinks") if sinks else None
        out = b.to_host(b.attention(b.asarray(q), b.asarray(k), b.asarray(v), cache, 0, start, sliding_window=window,
                                    sinks=b.load_weight(sink_w) if sinks else None, rope=rope))
        ref = REF.attention(q, k, v, ref_cache, 0, start, sliding_window=window,
                            sinks=REF.load_weight(sink_w) if sinks else None, rope=rope)
    finally:
        b.free_kv_cache(cache)
    check(_op(kv_dtype, "rope" if rope else ""), f"decode {DECODE_GEOMETRY[geometry]}", out, ref)


@pytest.mark.parametrize("T, H, KVH, hd", [(1, 14, 2, 64), (4, 9, 3, 64), (2, 64, 8, 64), (3, 16, 2, 128),
                                           (1, 8, 2, 256)])
def test_decode_int8_side_output_equals_quantize_q8(T, H, KVH, hd):
    """The int8 blocks the decode kernel writes beside its output are those quantize_q8 makes of it."""
    from worker.backend.kernels import vecdot

    b = _backend("float16", checking=False)
    if not getattr(b, "matvec_terms", 0):
        pytest.skip("this backend does not use int8 activations")
    rng = np.random.default_rng(T * H + hd)
    n_ctx, start = 3000, 2500
    cache = b.new_kv_cache(1, n_ctx, KVH, hd)
    try:
        cache.k[0][:start] = b.cp.asarray(rng.standard_normal((start, KVH, hd)).astype(np.float16))
        cache.v[0][:start] = b.cp.asarray(rng.standard_normal((start, KVH, hd)).astype(np.float16))
        q, k, v = (b.asarray(rng.standard_normal((T, n, hd)).astype(np.float32)) for n in (H, KVH, KVH))
        out = b.attention(q, k, v, cache, 0, start)
        last = b._q8_last
        assert last is not None and last[0] is out, "the decode call did not record its int8 output"
        terms, xq, xds = last[4], last[-2], last[-1]
        got_q, got_ds = b.cp.asnumpy(xq), b.cp.asnumpy(xds)
        xq2, xds2 = vecdot.activation_buffers(b, T, H * hd)
        vecdot.quantize(b, out.reshape(T, H * hd), xq2, xds2, T, H * hd, terms)
        n = terms * T * H * hd
        np.testing.assert_array_equal(got_q[:n], b.cp.asnumpy(xq2)[:n])
        np.testing.assert_array_equal(got_ds, b.cp.asnumpy(xds2))
    finally:
        b.free_kv_cache(cache)


# (H, KVH, hd, T, start, n_ctx, window, sinks): contexts 1..4096 of Qwen2.5's and GPT-OSS's heads in short
# and long caches (one active chunk in a long cache: the grid's split blocks share the rows), T = 1..4.
ROWS_GEOMETRY = [
    (14, 2, 64, 1, 0, 256, 0, False),
    (14, 2, 64, 1, 31, 256, 0, False),
    (14, 2, 64, 2, 127, 256, 0, False),
    (14, 2, 64, 1, 40, 4352, 0, False),
    (14, 2, 64, 4, 1023, 1280, 0, False),
    (14, 2, 64, 1, 4095, 4352, 0, False),
    (64, 8, 64, 1, 31, 256, 0, True),
    (64, 8, 64, 3, 200, 4352, 128, True),
    (64, 8, 64, 1, 4000, 4352, 128, True),
    (64, 8, 64, 1, 1023, 1280, 0, True),
    (32, 4, 256, 1, 60, 2048, 0, True),
    (9, 3, 64, 4, 10, 8192, 0, False),
]


@pytest.mark.parametrize("choice", ["group", "auto", "1", "2", "4", "8"])
@pytest.mark.parametrize("geometry", range(len(ROWS_GEOMETRY)))
def test_decode_rows_a_block_as_chosen(monkeypatch, choice, geometry):
    """Every row count a decode block may take (kernels/attention.py DECODE_ROWS_CHOICE, which
    M0_CUDA_ATT_DECODE_ROWS sets) gives the reference's output within attention_f16kv's bound."""
    from worker.backend.kernels import attention as launcher

    monkeypatch.setattr(launcher, "DECODE_ROWS_CHOICE", choice)
    H, KVH, hd, T, start, n_ctx, window, sinks = ROWS_GEOMETRY[geometry]
    b = _backend("float16")
    rng = np.random.default_rng(100 + geometry)
    old_k, old_v, q, k, v = _inputs(rng, T, start, KVH, H, hd, "float16", n_ctx)
    rope = RopeConfig(dim=hd, base=10000.0, style="neox")
    ref_cache, cache = REF.new_kv_cache(1, n_ctx, KVH, hd), b.new_kv_cache(1, n_ctx, KVH, hd)
    try:
        ref_cache.k[0][:start], ref_cache.v[0][:start] = old_k, old_v
        cache.k[0][:start] = b.cp.asarray(old_k).astype(cache.k[0].dtype)
        cache.v[0][:start] = b.cp.asarray(old_v).astype(cache.v[0].dtype)
        sink_w = f32_tensor(rng.standard_normal(H) * 2, "sinks") if sinks else None
        out = b.to_host(b.attention(b.asarray(q), b.asarray(k), b.asarray(v), cache, 0, start, sliding_window=window,
                                    sinks=b.load_weight(sink_w) if sinks else None, rope=rope))
        ref = REF.attention(q, k, v, ref_cache, 0, start, sliding_window=window,
                            sinks=REF.load_weight(sink_w) if sinks else None, rope=rope)
    finally:
        b.free_kv_cache(cache)
    check(_op("float16", "rope"), f"decode rows {choice} {ROWS_GEOMETRY[geometry]}", out, ref)
