"""FT-016 prefill products on TF32 tensor cores, split in three terms, against the NumPy reference.

Acceptance: with the default prefill path ("tf32x3", worker/backend/kernels/matmul.py) every
weight format of the registry, at T = 5, 64 and 512 tokens and the products' shapes of the real
models (SmolLM2 576/1536, Qwen2.5 896/4864, GPT-OSS 2880), matches worker.backend.numpy under the
float32 product row's threshold (term-normalized NMSE 1e-11): the split's own error is at most
2^-21 of each product term (stories/foundation/test_ft016_split_tf32_bound.py), so on these sums
it stays near the float32 summation error, four or more orders under the threshold. Very large and
very small activations keep that accuracy; a NaN or Inf scale makes exactly the outputs non-finite
that the float32 path (still selectable: M0_CUDA_PREFILL=fp32) and the reference make non-finite.
Bias and residual are the products' start value (one launch); the split input is reused by the
products of one input and redone when a kernel may have written it.
"""
from __future__ import annotations

import contextlib

import gguf
import numpy as np
import pytest

from fixtures.gguf_corrupt import random_blocks
from stories.foundation._cuda_conformance import (
    check_product,
    checking_backend,
    cuda_backend,
    f32_tensor,
    q8_prefill_path,
    random_weight,
    record,
)
from worker.backend.numpy import NumpyBackend
from worker.quant import FORMATS, QuantTensor

Q = gguf.GGMLQuantizationType
REF = NumpyBackend()
pytestmark = [pytest.mark.gpu, pytest.mark.story("FT-016")]
SCALED_FORMATS = [q for q, f in FORMATS.items() if f.f16_fields]     # formats with f16 scale fields


@pytest.fixture(autouse=True, scope="module")
def q8_products_dequantize():
    """These checks are of matmul.prefill_product: Q8_0 prefill products stay on it (the default path, auto, sends
    short ones to the int8 tensor cores, checked in test_ft016_int8_prefill_products.py)."""
    with q8_prefill_path("tf32x3"):
        yield


def model_shape(qtype, T: int) -> tuple[int, int]:
    """(N, K) of a real model's product whose K is whole blocks of `qtype`."""
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    fits = [shape for shape in {5: [(4864, 896), (4864, 1536)], 64: [(896, 4864)],
                                512: [(2880, 2880), (576, 1536)]}[T] if shape[1] % block == 0]
    return fits[0]


@contextlib.contextmanager
def prefill_path(b, path: str):
    """Run the backend's prefill products on `path` ("tf32x3" or "fp32") inside the block."""
    from worker.backend.kernels import matmul

    state = matmul.prefill_products(b)
    before, state.path = state.path, path
    try:
        yield
    finally:
        state.path = before


def product(b, x: np.ndarray, weight, bias=None) -> np.ndarray:
    return b.to_host(b.matmul(b.asarray(x), weight, bias))


@pytest.mark.parametrize("T", [5, 64, 512])
@pytest.mark.parametrize("qtype", list(FORMATS), ids=lambda q: q.name)
def test_every_format_at_model_shapes(qtype, T):
    b = checking_backend()
    N, K = model_shape(qtype, T)
    rng = np.random.default_rng(T * 1000 + int(qtype))
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    ref_w = REF.load_weight(w)
    with prefill_path(b, "tf32x3"):
        out = product(b, x, b.load_weight(w))
    check_product(f"matmul:{qtype.name}", f"tf32x3 T={T} N={N} K={K}", out, REF.matmul(x, ref_w), x, ref_w.dense())


@pytest.mark.parametrize("path", ["tf32x3", "fp32"])
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q8_0, Q.F16, Q.F32], ids=lambda q: q.name)
def test_both_paths_selectable_with_bias(qtype, path):
    b = checking_backend()
    rng = np.random.default_rng(11)
    N, K = model_shape(qtype, 64)
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((64, K)).astype(np.float32)
    bias = f32_tensor(rng.standard_normal(N), "bias")
    ref_w, ref_b = REF.load_weight(w), REF.load_weight(bias)
    with prefill_path(b, path):
        out = product(b, x, b.load_weight(w), b.load_weight(bias))
    check_product(f"matmul:{qtype.name}", f"{path} bias T=64 N={N} K={K}", out, REF.matmul(x, ref_w, ref_b), x,
                  ref_w.dense(), ref_b.dense())


SCALED_CASES = [  # (format, activation scale, weight scale (F32 only)): products and sums stay finite and normal
    (Q.F32, 1e30, 1.0), (Q.F32, 1e-12, 1e-12), (Q.F32, 1.0, 1e-30), (Q.F32, 3e38, 1e-7),
    (Q.Q8_0, 1e30, 1.0), (Q.Q8_0, 1e-20, 1.0), (Q.Q6_K, 1e30, 1.0), (Q.Q6_K, 1e-20, 1.0),
]


@pytest.mark.parametrize("qtype,x_scale,w_scale", SCALED_CASES,
                         ids=[f"{q.name}-x{xs:g}-w{ws:g}" for q, xs, ws in SCALED_CASES])
def test_huge_and_tiny_values(qtype, x_scale, w_scale):
    """Scaled operands. x 3e38: activations up to FLT_MAX, where rounding to TF32 would overflow and
    the split truncates instead."""
    b = checking_backend()
    rng = np.random.default_rng(5)
    N, K = (896, 1536)
    w = random_weight(qtype, (N, K), rng)
    if qtype == Q.F32:
        w = f32_tensor((REF.load_weight(w).dense() * np.float32(w_scale)).astype(np.float32), "w")
    x = np.clip(rng.standard_normal((64, K)) * x_scale, -3.4e38, 3.4e38).astype(np.float32)
    if x_scale > 1e38:                 # some values at FLT_MAX itself
        x[:, :8] = np.finfo(np.float32).max
    ref_w = REF.load_weight(w)
    ref = REF.matmul(x, ref_w)
    assert np.isfinite(ref).all(), "the test's own scales must keep the reference finite"
    out = product(b, x, b.load_weight(w))
    check_product(f"matmul:{qtype.name}", f"x*{x_scale:g} w*{w_scale:g} T=64 N={N} K={K}", out, ref, x,
                  ref_w.dense())


@pytest.mark.parametrize("qtype", SCALED_FORMATS, ids=lambda q: q.name)
def test_nan_and_inf_scales_behave_as_the_fp32_path(qtype):
    """Raw random blocks (some f16 scales Inf or NaN): the same outputs are non-finite on both paths
    and in the reference; the finite ones hold the float32 product row's bound."""
    b = checking_backend()
    rng = np.random.default_rng(int(qtype) + 99)
    N, K = model_shape(qtype, 64)
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.ascontiguousarray(random_blocks(qtype, N * K // block, rng, sane=False)).reshape(-1)
    w = QuantTensor("w", qtype, (N, K), raw)
    x = rng.standard_normal((64, K)).astype(np.float32)
    weight, ref_w = b.load_weight(w), REF.load_weight(w)
    with prefill_path(b, "fp32"):
        fp32 = product(b, x, weight)
    with prefill_path(b, "tf32x3"):
        out = product(b, x, weight)
    with np.errstate(all="ignore"):
        ref = REF.matmul(x, ref_w)
        dense = ref_w.dense()
        finite = np.isfinite(ref)
        assert (~finite).any(), "no non-finite scale drawn: the test would not test them"
        np.testing.assert_array_equal(np.isfinite(out), finite, "tf32x3: non-finite outputs differ from the reference")
        np.testing.assert_array_equal(np.isfinite(fp32), finite, "fp32: non-finite outputs differ from the reference")
        rows = np.isfinite(dense).all(axis=1)              # weight rows with no NaN/Inf value
        scale = np.abs(x.astype(np.float64)) @ np.abs(dense[rows].astype(np.float64)).T
        err = np.sum((out[:, rows].astype(np.float64) - ref[:, rows]) ** 2)
    value = float(err / np.sum(scale * scale)) if rows.any() else 0.0
    limit = record(f"matmul:{qtype.name}", f"non-finite scales, finite rows T=64 N={N} K={K}", value)
    assert value <= limit


@pytest.mark.parametrize("in_place", [False, True])
def test_bias_and_residual_as_the_start_value(in_place):
    """prefill_product(..., bias, residual): y = x W^T + b + r; a residual that is y itself costs no launch."""
    from worker.backend.kernels import matmul

    b = checking_backend()
    rng = np.random.default_rng(3)
    N, K, T = 896, 4864, 37
    w = random_weight(Q.Q4_K, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    r = rng.standard_normal((T, N)).astype(np.float32)
    weight, ref_w = b.load_weight(w), REF.load_weight(w)
    y = b.asarray(r) if in_place else b.cp.full((T, N), np.nan, dtype=np.float32)
    residual = y if in_place else b.asarray(r)
    matmul.prefill_product(b, weight, weight.raw, b.asarray(x), y, b.asarray(bias), residual, tile_bytes=64 << 20)
    ref = REF.matmul(x, ref_w) + bias + r
    check_product("matmul:Q4_K", f"bias+residual in_place={in_place} T={T} N={N} K={K}", b.to_host(y), ref, x,
                  ref_w.dense(), np.abs(bias) + np.abs(r))


def test_split_input_reused_only_while_unchanged(monkeypatch):
    """Two products of one input share its split; a kernel writing the input makes the next product split again."""
    from worker.backend.kernels import matmul

    b = checking_backend()
    rng = np.random.default_rng(4)
    T, K = 40, 896
    ws = [random_weight(Q.Q8_0, (N, K), rng) for N in (896, 128)]
    weights = [b.load_weight(w) for w in ws]
    splits = []
    split_input = matmul.split_input
    monkeypatch.setattr(matmul, "split_input", lambda *a: splits.append(a) or split_input(*a))
    x_host = rng.standard_normal((T, K)).astype(np.float32)
    x = b.asarray(x_host)
    with prefill_path(b, "tf32x3"):
        for w, weight in zip(ws, weights):        # q then k of one normed input
            ref_w = REF.load_weight(w)
            check_product("matmul:Q8_0", f"shared input T={T} N={w.shape[0]} K={K}", b.to_host(b.matmul(x, weight)),
                          REF.matmul(x_host, ref_w), x_host, ref_w.dense())
        assert len(splits) == 1, "the second product of the same input split it again"
        other = rng.standard_normal((T, K)).astype(np.float32)
        matmul.bias_residual_init(b, x, None, b.asarray(other), T, K)      # a kernel overwrites x in place
        ref_w = REF.load_weight(ws[0])
        check_product("matmul:Q8_0", f"rewritten input T={T} N=896 K={K}", b.to_host(b.matmul(x, weights[0])),
                      REF.matmul(other, ref_w), other, ref_w.dense())
        assert len(splits) == 2


def test_workspace_is_bounded_and_counted():
    import worker.backend.cuda as cuda

    b = checking_backend()
    rng = np.random.default_rng(8)
    w = random_weight(Q.Q8_0, (49152, 576), rng)        # SmolLM2's LM head: several tiles
    x = rng.standard_normal((100, 576)).astype(np.float32)
    out = product(b, x, b.load_weight(w))
    ref_w = REF.load_weight(w)
    check_product("matmul:Q8_0", "tf32x3 T=100 N=49152 K=576", out, REF.matmul(x, ref_w), x, ref_w.dense())
    assert b._workspace["dequant_tile"].nbytes <= cuda.TILE_MAX_BYTES
    assert b._workspace["prefill_split_input"].nbytes >= 3 * 100 * 576 * 4
    assert b.memory_report()["workspace"] >= b._workspace["dequant_tile"].nbytes


@pytest.mark.parametrize("path", ["tf32x3", "fp32"])
def test_prefill_product_replays_from_a_cuda_graph(path):
    """Captured on a stream (cuBLAS included) and replayed on new input values: no host sync, no allocation."""
    from worker.backend.kernels import matmul

    b = cuda_backend()
    cp = b.cp
    rng = np.random.default_rng(9)
    T, N, K = 64, 896, 4864
    w = random_weight(Q.Q4_K, (N, K), rng)
    weight, ref_w = b.load_weight(w), REF.load_weight(w)
    bias = rng.standard_normal(N).astype(np.float32)
    x, y, dev_bias = cp.zeros((T, K), np.float32), cp.zeros((T, N), np.float32), b.asarray(bias)
    with prefill_path(b, path):
        matmul.prefill_product(b, weight, weight.raw, x, y, dev_bias, tile_bytes=64 << 20)   # sizes the workspace
        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            stream.begin_capture()
            matmul.prefill_product(b, weight, weight.raw, x, y, dev_bias, tile_bytes=64 << 20)
            graph = stream.end_capture()
        for seed in (1, 2):
            x_host = np.random.default_rng(seed).standard_normal((T, K)).astype(np.float32)
            with stream:                  # the copy on the replay's stream, ordered before it
                x.set(x_host)
                graph.launch(stream)
            stream.synchronize()
            check_product("matmul:Q4_K", f"{path} graph replay T={T} N={N} K={K}", y.get(),
                          REF.matmul(x_host, ref_w, bias), x_host, ref_w.dense(), bias)
