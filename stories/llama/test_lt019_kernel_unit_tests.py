"""LT-019 kernel unit tests: every CUDA op a Llama-family model uses, against the NumPy reference.

Acceptance: on hypothesis-drawn shapes (odd sizes, sizes that are not a multiple of the block,
long contexts) each CUDA kernel matches worker.backend.numpy within its stated NMSE threshold
(stories/foundation/_cuda_conformance.py), outputs are NaN-poisoned before each run and NaN
never passes; weights are read in every stored format of the registry (worker/quant/formats.py:
floats, legacy, K-, IQ- and ternary quants, MXFP4) without being expanded in device memory.
Also covers the kernel stories LT-012 (rope), LT-013 (rmsnorm), LT-014 (residual),
LT-015/LT-016 (GQA attention prefill/decode), LT-017 (SwiGLU).
"""
import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stories.foundation._cuda_conformance import (
    check,
    check_product,
    checking_backend,
    cuda_backend,
    examples,
    f32_tensor,
    product_op,
    random_weight,
)
from worker.backend.numpy import NumpyBackend
from worker.config import RopeConfig
from worker.quant import FORMATS

Q = gguf.GGMLQuantizationType
REF = NumpyBackend()
ALL_FORMATS = list(FORMATS)   # every format of the registry (worker/quant/formats.py)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = pytest.mark.gpu


def _k(qtype, n_blocks: int, odd: int) -> int:
    """A row length: whole blocks for quant formats; any length (odd included) for floats."""
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return odd if block == 1 else n_blocks * block


# -- weights in every stored format ------------------------------------------------------------------

@pytest.mark.story("LT-019", "FT-015")
@pytest.mark.parametrize("qtype", ALL_FORMATS, ids=lambda q: q.name)
@settings(max_examples=examples(12), **SETTINGS)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 67), n_blocks=st.integers(1, 5), odd=st.integers(1, 333),
       T=st.integers(1, 40))
def test_embedding_rows_are_dequantized_exactly(qtype, seed, rows, n_blocks, odd, T):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    K = _k(qtype, n_blocks, odd)
    t = random_weight(qtype, (rows, K), rng, "token_embd.weight")
    ids = rng.integers(0, rows, size=T)
    out = b.to_host(b.embedding(b.load_weight(t), ids))
    check(f"embedding:{qtype.name}", f"V={rows} D={K} T={T}", out, REF.embedding(REF.load_weight(t), ids))
    # and against gguf-py, the oracle the reference is held to
    oracle = gguf.quants.dequantize(t.raw.reshape(rows, -1), qtype).reshape(rows, K)[ids]
    np.testing.assert_array_equal(out, oracle.astype(np.float32))


@pytest.mark.story("LT-019")
@pytest.mark.parametrize("qtype", ALL_FORMATS, ids=lambda q: q.name)
@settings(max_examples=examples(10), **SETTINGS)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 300), n_blocks=st.integers(1, 6), odd=st.integers(1, 700),
       T=st.sampled_from([1, 1, 2, 3, 4]), with_bias=st.booleans())
def test_fused_dequantize_matvec_matches_reference(qtype, seed, N, n_blocks, odd, T, with_bias):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    K = _k(qtype, n_blocks, odd)
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    bias = f32_tensor(rng.standard_normal(N), "bias") if with_bias else None
    out = b.to_host(b.matmul(b.asarray(x), b.load_weight(w), b.load_weight(bias) if bias else None))
    ref_w = REF.load_weight(w)
    ref = REF.matmul(x, ref_w, REF.load_weight(bias) if bias else None)
    check_product(f"{product_op(b, 'matvec', qtype, T)}:{qtype.name}", f"T={T} N={N} K={K} bias={with_bias}", out,
                  ref, x, ref_w.dense(),
                  REF.load_weight(bias).dense() if bias else None)


@pytest.mark.story("LT-019", "FT-016")
@pytest.mark.parametrize("qtype", ALL_FORMATS, ids=lambda q: q.name)
@settings(max_examples=examples(6), **SETTINGS)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 260), n_blocks=st.integers(1, 4), odd=st.integers(1, 500),
       T=st.integers(5, 90))
def test_prefill_matmul_matches_reference(qtype, seed, N, n_blocks, odd, T):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    K = _k(qtype, n_blocks, odd)
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    out = b.to_host(b.matmul(b.asarray(x), b.load_weight(w)))
    ref_w = REF.load_weight(w)
    check_product(f"{product_op(b, 'matmul', qtype, T, N, K)}:{qtype.name}", f"T={T} N={N} K={K}", out,
                  REF.matmul(x, ref_w), x, ref_w.dense())


@pytest.mark.story("LT-019")
@pytest.mark.parametrize("qtype,N,K", [(Q.Q4_1, 49152, 576), (Q.Q8_0, 1536, 576), (Q.Q4_K, 896, 4864),
                                       (Q.Q6_K, 151936 // 8, 1024), (Q.MXFP4, 2880, 2880),
                                       (Q.F32, 32, 2880), (Q.F16, 20, 2049)],
                         ids=lambda v: getattr(v, "name", str(v)))
@pytest.mark.parametrize("T", [1, 33])
def test_model_sized_products(qtype, N, K, T):
    """Hand-picked real shapes: SmolLM2's LM head and FFN, Qwen2.5's down projection, GPT-OSS's experts and
    router (few rows: the float matvec splits each row over several warps), a float row with a K % 8 tail."""
    b = checking_backend()
    rng = np.random.default_rng(N + K + T)
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    out = b.to_host(b.matmul(b.asarray(x), b.load_weight(w)))
    ref_w = REF.load_weight(w)
    op = product_op(b, "matvec" if T <= 4 else "matmul", qtype, T, N, K)
    check_product(f"{op}:{qtype.name}", f"T={T} N={N} K={K}", out,
                  REF.matmul(x, ref_w), x, ref_w.dense())


INT8_FORMATS = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.MXFP4]     # vecdot.cuh


@pytest.mark.story("LT-019")
@pytest.mark.parametrize("qtype", INT8_FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("path", ["q8", "float"])
@settings(max_examples=examples(6), **SETTINGS)
@given(seed=st.integers(0, 2**31), N=st.integers(16, 300), n_blocks=st.integers(1, 6), T=st.sampled_from([1, 2, 4]),
       with_bias=st.booleans())
def test_selectable_matvec_paths(qtype, path, seed, N, n_blocks, T, with_bias):
    """The other decode paths: llama.cpp's single-term Q8_1 activations, and the float matvec (no int8).

    Shapes as test-backend-ops draws them for its 5e-4 bound (at least 16 rows of at least 256
    values): a single short product's plain NMSE is dominated by cancellation, not by the kernel.
    """
    b = cuda_backend(poison_outputs=True, sync_each_op=True, matvec=path)
    rng = np.random.default_rng(seed)
    K = max(256, _k(qtype, n_blocks, 0))
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    bias = f32_tensor(rng.standard_normal(N), "bias") if with_bias else None
    out = b.to_host(b.matmul(b.asarray(x), b.load_weight(w), b.load_weight(bias) if bias else None))
    ref_w = REF.load_weight(w)
    ref = REF.matmul(x, ref_w, REF.load_weight(bias) if bias else None)
    op, shape = f"{product_op(b, 'matvec', qtype, T)}:{qtype.name}", f"T={T} N={N} K={K} bias={with_bias}"
    if path == "q8":            # llama.cpp's metric for this path: plain NMSE
        check(op, shape, out, ref)
    else:
        check_product(op, shape, out, ref, x, ref_w.dense(), REF.load_weight(bias).dense() if bias else None)


@pytest.mark.story("LT-019", "LT-013", "LT-017")
@pytest.mark.parametrize("producer", ["rmsnorm", "swiglu", "swiglu_clamped", "attention"])
@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q6_K, Q.MXFP4], ids=lambda q: q.name)
@settings(max_examples=examples(4), **SETTINGS)
@given(seed=st.integers(0, 2**31), T=st.sampled_from([1, 2, 4]), n_blocks=st.integers(1, 4), N=st.integers(1, 200))
def test_producer_writes_the_next_products_int8_input(producer, qtype, seed, T, n_blocks, N):
    """rmsnorm, SwiGLU and attention also write their decode output as the products' int8 blocks; the
    products that read it (q/k/v, gate/up, down, output) take those blocks instead of quantizing again."""
    b = checking_backend()
    rng = np.random.default_rng(seed)
    K = max(256, _k(qtype, n_blocks, 0))
    a, c = (rng.standard_normal((T, K)).astype(np.float32) * 3 for _ in range(2))
    if producer == "rmsnorm":
        nw = f32_tensor(1 + 0.3 * rng.standard_normal(K))
        h = b.rmsnorm(b.asarray(a), b.load_weight(nw), 1e-5)
        ref_h = REF.rmsnorm(a, REF.load_weight(nw), 1e-5)
    elif producer == "attention":               # heads of 64 (K // 64 of them, two per KV head)
        H, hd = K // 64, 64
        q, kk, v = (rng.standard_normal((T, n, hd)).astype(np.float32) for n in (H, H // 2, H // 2))
        cache, ref_cache = b.new_kv_cache(1, T + 3, H // 2, hd), REF.new_kv_cache(1, T + 3, H // 2, hd)
        h = b.attention(b.asarray(q), b.asarray(kk), b.asarray(v), cache, 0, 0)
        ref_h = REF.attention(q, kk, v, ref_cache, 0, 0)
        b.free_kv_cache(cache)
    else:
        clamp = dict(limit=7.0, alpha=1.702) if producer == "swiglu_clamped" else {}
        h = b.swiglu(b.asarray(a), b.asarray(c), **clamp)
        ref_h = REF.swiglu(a, c, **clamp)
    check("attention_f16kv" if producer == "attention" else producer, f"T={T} D={K} (int8 side output)",
          b.to_host(h), ref_h)
    fused = getattr(b, "_q8_last", None)
    w = random_weight(qtype, (N, K), rng)
    out = b.to_host(b.matmul(h, b.load_weight(w)))
    assert b._q8_last is fused and fused is not None and fused[0] is h, "the product quantized its input again"
    ref_w = REF.load_weight(w)
    check_product(f"{product_op(b, 'matvec', qtype, T)}:{qtype.name}", f"after {producer} T={T} N={N} K={K}", out,
                  REF.matmul(ref_h, ref_w), ref_h, ref_w.dense())


# -- norms, residual, activation ---------------------------------------------------------------------

@pytest.mark.story("LT-019", "LT-013")
@settings(max_examples=examples(30), **SETTINGS)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 70),
       D=st.sampled_from([1, 7, 31, 64, 65, 576, 896, 1000, 2880, 4097]),
       eps=st.sampled_from([1e-5, 1e-6]), scale=st.sampled_from([1e-3, 1.0, 300.0]))
def test_rmsnorm(seed, T, D, eps, scale):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, D)) * scale).astype(np.float32)
    w = f32_tensor(1 + 0.3 * rng.standard_normal(D))
    out = b.to_host(b.rmsnorm(b.asarray(x), b.load_weight(w), eps))
    check("rmsnorm", f"T={T} D={D}", out, REF.rmsnorm(x, REF.load_weight(w), eps))


@pytest.mark.story("LT-019", "LT-014", "GT-015")
@settings(max_examples=examples(25), **SETTINGS)
@given(seed=st.integers(0, 2**31), shape=st.sampled_from([(1,), (3, 5), (7, 576), (1, 896), (33, 1, 17), (129, 2880)]))
def test_residual_add(seed, shape):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    x, y = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    check("add", str(shape), b.to_host(b.add(b.asarray(x), b.asarray(y))), REF.add(x, y))


@pytest.mark.story("LT-019", "LT-017")
@settings(max_examples=examples(25), **SETTINGS)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 40), F=st.sampled_from([1, 5, 128, 1536, 4864, 4097]),
       scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_swiglu(seed, T, F, scale):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    g, u = ((rng.standard_normal((T, F)) * scale).astype(np.float32) for _ in range(2))
    check("swiglu", f"T={T} F={F}", b.to_host(b.swiglu(b.asarray(g), b.asarray(u))), REF.swiglu(g, u))


# -- rope ---------------------------------------------------------------------------------------------

ROPES = [
    RopeConfig(dim=64, base=100000.0, style="normal"),                       # SmolLM2
    RopeConfig(dim=64, base=1000000.0, style="neox"),                         # Qwen2.5
    RopeConfig(dim=96, base=10000.0, style="neox"),                           # Phi-3
    RopeConfig(dim=32, base=10000.0, style="neox"),                           # partial: head 80
    RopeConfig(dim=16, base=10000.0, style="normal", scaling="linear", factor=4.0),
    RopeConfig(dim=64, base=150000.0, style="neox", scaling="yarn", factor=32.0, original_context=4096),  # GPT-OSS
]


@pytest.mark.story("LT-019", "LT-012")
@pytest.mark.parametrize("rope", ROPES, ids=lambda r: f"{r.style}-{r.scaling}-{r.dim}")
@settings(max_examples=examples(8), **SETTINGS)
@given(seed=st.integers(0, 2**31), T=st.integers(1, 50), H=st.integers(1, 14),
       start=st.sampled_from([0, 1, 7, 511, 4095, 70000]),
       contiguous=st.booleans())
def test_rope(rope, seed, T, H, start, contiguous):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    head_dim = {96: 96, 32: 80}.get(rope.dim, rope.dim)
    x = rng.standard_normal((T, H, head_dim)).astype(np.float32)
    positions = np.arange(start, start + T) if contiguous else np.sort(rng.integers(0, start + T + 1, size=T))
    out = b.to_host(b.rope(b.asarray(x), positions, rope))
    check("rope", f"{rope.style}/{rope.scaling} T={T} H={H} hd={head_dim} start={start}", out,
          REF.rope(x, positions, rope))


# -- attention ----------------------------------------------------------------------------------------

def _attention_case(b, seed, T, start, H, KVH, hd, window, sinks, kv_dtype):
    rng = np.random.default_rng(seed)
    n_ctx = start + T + int(rng.integers(0, 5))
    ref_cache = REF.new_kv_cache(1, n_ctx, KVH, hd)
    cache = b.new_kv_cache(1, n_ctx, KVH, hd)
    try:
        if start:                                 # earlier positions: already in both caches
            old_k = rng.standard_normal((start, KVH, hd)).astype(np.float32)
            old_v = rng.standard_normal((start, KVH, hd)).astype(np.float32)
            if kv_dtype == "float16":             # what the float16 cache holds, exactly
                old_k, old_v = old_k.astype(np.float16).astype(np.float32), old_v.astype(np.float16).astype(np.float32)
            ref_cache.k[0][:start], ref_cache.v[0][:start] = old_k, old_v
            cache.k[0][:start] = b.cp.asarray(old_k).astype(cache.k[0].dtype)
            cache.v[0][:start] = b.cp.asarray(old_v).astype(cache.v[0].dtype)
        q = rng.standard_normal((T, H, hd)).astype(np.float32)
        k = rng.standard_normal((T, KVH, hd)).astype(np.float32)
        v = rng.standard_normal((T, KVH, hd)).astype(np.float32)
        sink_w = f32_tensor(rng.standard_normal(H) * 2, "sinks") if sinks else None
        out = b.to_host(b.attention(b.asarray(q), b.asarray(k), b.asarray(v), cache, 0, start, sliding_window=window,
                                    sinks=b.load_weight(sink_w) if sinks else None))
        ref = REF.attention(q, k, v, ref_cache, 0, start, sliding_window=window,
                            sinks=REF.load_weight(sink_w) if sinks else None)
        stored = b.cp.asnumpy(cache.k[0][start:start + T]).astype(np.float32)
        expect = k.astype(np.float16).astype(np.float32) if kv_dtype == "float16" else k
        np.testing.assert_array_equal(stored, expect)      # the new keys went to the right rows
        return out, ref
    finally:
        b.free_kv_cache(cache)


@pytest.mark.story("LT-019", "LT-015", "LT-016")
@pytest.mark.parametrize("kv_dtype", ["float16", "float32"])
@settings(max_examples=examples(25), **SETTINGS)
@given(seed=st.integers(0, 2**31), T=st.sampled_from([1, 1, 2, 5, 17, 64, 130]),
       start=st.sampled_from([0, 0, 1, 31, 200, 1000]),
       kv_heads=st.sampled_from([1, 2, 3, 4]), group=st.sampled_from([1, 2, 3, 7, 8]),
       hd=st.sampled_from([16, 32, 64, 80, 128, 256]))
def test_gqa_attention_prefill_and_decode(kv_dtype, seed, T, start, kv_heads, group, hd):
    b = checking_backend() if kv_dtype == "float16" else _f32_cache_backend()
    out, ref = _attention_case(b, seed, T, start, kv_heads * group, kv_heads, hd, 0, False, kv_dtype)
    check(f"attention_{'f16' if kv_dtype == 'float16' else 'f32'}kv", f"T={T} start={start} H={kv_heads * group} "
          f"KV={kv_heads} hd={hd}", out, ref)


@pytest.mark.story("LT-019", "LT-016")
@pytest.mark.parametrize("context", [2048, 8191, 32768])
def test_decode_attention_long_context(context):
    """One new token attending over a long, already-filled cache (SmolLM2 heads: 9 q / 3 kv, hd 64)."""
    b = checking_backend()
    out, ref = _attention_case(b, context, 1, context - 1, 9, 3, 64, 0, False, "float16")
    check("attention_f16kv", f"T=1 start={context - 1} H=9 KV=3 hd=64", out, ref)


def _f32_cache_backend():
    from stories.foundation._cuda_conformance import cuda_backend

    return cuda_backend(poison_outputs=True, sync_each_op=True, kv_dtype="float32")


# -- sampling helpers ---------------------------------------------------------------------------------

@pytest.mark.story("LT-019")
@settings(max_examples=examples(25), **SETTINGS)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 9), N=st.sampled_from([1, 3, 40, 257, 49152, 151936]),
       ties=st.booleans())
def test_argmax_first_index_on_ties(seed, rows, N, ties):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, N)).astype(np.float32)
    if ties:     # the maximum appears several times: NumPy's rule is the first index
        x = np.round(x * 2) / 2
        x[:, rng.integers(0, N, size=min(N, 4))] = x.max() + 1
    ours = b.argmax(b.asarray(x))
    wrong = int(np.sum(ours != REF.argmax(x)))
    check("argmax", f"rows={rows} N={N} ties={ties}", np.array([float(wrong)]), np.array([0.0]))
    assert ours.shape == (rows,)
    assert int(b.argmax(b.asarray(x[0]))) == int(np.argmax(x[0]))        # 1-D input: one index


@pytest.mark.story("LT-019", "LT-017")
def test_swiglu_saturated_gates_keep_relative_accuracy():
    """Very negative gates (silu -> tiny) and very positive ones, element by element."""
    b = checking_backend()
    g = np.array([[-90.0, -40.0, -17.0, -5.0, -1e-3, 0.0, 2.0, 40.0, 90.0]], np.float32)
    u = np.array([[3.0, -2.0, 0.5, 1.0, 7.0, 4.0, -1.0, 0.25, 1.0]], np.float32)
    out = b.to_host(b.swiglu(b.asarray(g), b.asarray(u)))
    ref = REF.swiglu(g, u)
    bound = 1e-6 * np.abs(ref) + 1e-15 * np.abs(g * u) + 1e-44
    assert np.all(np.abs(out.astype(np.float64) - ref) <= bound), (out, ref)
    assert np.all((out != 0) | (np.abs(ref) < 1e-30)), "a clearly non-zero value was flushed to zero"
    check("swiglu", "hand-picked saturation (1, 9)", out, ref)
