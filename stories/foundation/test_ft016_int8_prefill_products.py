"""FT-016 prefill products of Q8_0 weights on int8 tensor cores (worker/backend/kernels/mmq.cu) on the GPU.

Acceptance: the kernel, launched on the decode products' int8 activations (vecdot.quantize, two terms), equals
the exact int8 product of stories/foundation/_mmq_reference.py up to float32 accumulation and lands on the NumPy
backend's product under the conformance row matmul_q8x2 (term-normalized 1e-8, the bound of the decode products'
matvec_q8x2: the same activation blocks), over T and N that are not multiples of its 64 x 64 tile and the real
models' K (GPT-OSS 2880 and 4096); outputs are poisoned with NaN first, so an unwritten element fails. Through
CudaBackend.matmul, M0_CUDA_PREFILL_Q8=mma sends Q8_0 products of T > 4 tokens to it (bias included), quantizes
one input once for the products that share it, and leaves other formats and decode products on their paths; the
default, auto, sends products of up to mmq.MMQ_AUTO_MAX_T tokens to it and longer ones to tf32x3. The host tests
(test_ft016_int8_prefill_products_on_the_host.py) check the same source without a GPU.
"""
from __future__ import annotations

import contextlib

import gguf
import numpy as np
import pytest

from stories.foundation._cuda_conformance import (
    THRESHOLDS,
    check_product,
    checking_backend,
    cuda_backend,
    f32_tensor,
    q8_prefill_path,
    random_weight,
)
from stories.foundation._mmq_reference import dequantized, int8_product, term_normalized
from worker.backend.kernels import mmq, vecdot
from worker.backend.numpy import NumpyBackend

Q = gguf.GGMLQuantizationType
REF = NumpyBackend()
EXACT = 1e-12                         # float32 accumulation of exact block sums, term-normalized
pytestmark = [pytest.mark.gpu, pytest.mark.story("FT-016")]


@contextlib.contextmanager
def launches(b):
    """The names of the kernels the backend launches inside the block."""
    names, launch = [], b._launch

    def recording(module, name, *args, **kwargs):
        names.append(name)
        return launch(module, name, *args, **kwargs)

    b._launch = recording
    try:
        yield names
    finally:
        del b._launch


@pytest.mark.parametrize("T,N,K", [(5, 1, 32), (65, 129, 160), (128, 512, 2880), (300, 77, 4096), (512, 2880, 64),
                                   (2048, 96, 2880), (128, 4096, 2880)])
def test_kernel_matches_the_reference(T, N, K):
    """At each shape with the launcher's split choice (mmq.k_splits: 8 blocks a tile for T = 128, N = 512) and
    unsplit."""
    b = checking_backend()
    rng = np.random.default_rng(T + N + K)
    w = random_weight(Q.Q8_0, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    dw = b.load_weight(w)
    xq, xds = vecdot.activation_buffers(b, T, K)
    vecdot.quantize(b, b.asarray(x), xq, xds, T, K, 2)
    blocks = np.asarray(w.raw, np.uint8).reshape(N, -1)
    exact, dense = int8_product(x, blocks, N), dequantized(blocks, N, K)
    ref_w = REF.load_weight(w)
    ref = REF.matmul(x, ref_w)
    for splits in sorted({1, mmq.k_splits(T, N, K)}):
        y = b._out((T, N))
        mmq.product(b, dw.raw, dw.row_bytes, xq, xds, y, T, N, K, 2, splits=splits)
        out = b.to_host(y)
        assert term_normalized(out, exact, x, dense) <= EXACT, f"splits={splits}"
        check_product("matmul_q8x2:Q8_0", f"mmq T={T} N={N} K={K} splits={splits}", out, ref, x, ref_w.dense())


@pytest.mark.parametrize("T", [5, 64, 512])
def test_the_switch_sends_q8_0_prefill_products_to_the_kernel(T):
    b = checking_backend()
    rng = np.random.default_rng(T)
    N, K = 2880, 4096
    weights = [random_weight(Q.Q8_0, (n, K), rng, name=f"w{n}") for n in (N, 512, 512)]   # q, k, v of one input
    bias = f32_tensor(rng.standard_normal(N), "bias")
    x = rng.standard_normal((T, K)).astype(np.float32)
    dev, dev_bias = [b.load_weight(w) for w in weights], b.load_weight(bias)
    with q8_prefill_path("mma", b), launches(b) as names:
        xd = b.asarray(x)
        outs = [b.to_host(b.matmul(xd, d, dev_bias if i == 0 else None)) for i, d in enumerate(dev)]
    assert names.count("quantize_q8") == 1 and names.count("mmq_q8_0") == 3, names
    assert names.count("mmq_sum_splits") == sum(mmq.k_splits(T, w.shape[0], K) > 1 for w in weights), names
    ref_b = REF.load_weight(bias)
    for i, (w, out) in enumerate(zip(weights, outs)):
        ref_w = REF.load_weight(w)
        bias_i = ref_b if i == 0 else None
        check_product("matmul_q8x2:Q8_0", f"matmul T={T} N={w.shape[0]} K={K}", out, REF.matmul(x, ref_w, bias_i),
                      x, ref_w.dense(), None if bias_i is None else bias_i.dense())


@pytest.mark.parametrize("T", [5, 128, 512])
def test_the_bf16_path_on_gpt_oss_shapes(T):
    """M0_CUDA_PREFILL_Q8=bf16: GPT-OSS-20B's q, k, v and output products on mmq_bf16_q8_0 (activations split into
    two bfloat16 terms in the kernel: no quantize_q8 launch, no int8 kernel), within matmul_bf16x2's bound, bias and
    residual included (the residual the output itself)."""
    b = checking_backend()
    rng = np.random.default_rng(T + 1)
    shapes = [(4096, 2880), (512, 2880), (512, 2880), (2880, 4096)]
    for i, (N, K) in enumerate(shapes):
        w = random_weight(Q.Q8_0, (N, K), rng, name=f"w{i}")
        bias = f32_tensor(rng.standard_normal(N), "bias")
        x = rng.standard_normal((T, K)).astype(np.float32)
        with q8_prefill_path("bf16", b), launches(b) as names:
            out = b.to_host(b.matmul(b.asarray(x), b.load_weight(w), b.load_weight(bias)))
        assert "mmq_bf16_q8_0" in names and "quantize_q8" not in names and "mmq_q8_0" not in names, names
        ref_w, ref_b = REF.load_weight(w), REF.load_weight(bias)
        check_product("matmul_bf16x2:Q8_0", f"bf16 T={T} N={N} K={K}", out, REF.matmul(x, ref_w, ref_b), x,
                      ref_w.dense(), ref_b.dense())


def test_other_formats_and_decode_products_keep_their_paths():
    """Under mma a Q4_K prefill product still dequantizes tiles (prefill_product), a Q8_0 decode product still takes
    the matvec kernels; tf32x3 sends Q8_0 prefill products to prefill_product, and auto (the default) sends them
    here up to mmq.MMQ_AUTO_MAX_T tokens, to prefill_product above."""
    b = checking_backend()
    rng = np.random.default_rng(9)
    K = 256
    q4k, q8 = (b.load_weight(random_weight(q, (64, K), rng)) for q in (Q.Q4_K, Q.Q8_0))
    with q8_prefill_path("mma", b), launches(b) as prefill_q4k:
        b.matmul(b.asarray(rng.standard_normal((64, K)).astype(np.float32)), q4k)
    with q8_prefill_path("mma", b), launches(b) as decode_q8:
        b.matmul(b.asarray(rng.standard_normal((2, K)).astype(np.float32)), q8)
    with q8_prefill_path("tf32x3", b), launches(b) as default_q8:
        b.matmul(b.asarray(rng.standard_normal((64, K)).astype(np.float32)), q8)
    assert any(n.startswith("dequant_") and n.endswith("_q4_k") for n in prefill_q4k), prefill_q4k
    assert any(n.startswith(("mmvq_", "matvec_")) for n in decode_q8), decode_q8
    with q8_prefill_path("auto", b), launches(b) as auto_short:
        b.matmul(b.asarray(rng.standard_normal((64, K)).astype(np.float32)), q8)
    with q8_prefill_path("auto", b), launches(b) as auto_long:
        b.matmul(b.asarray(rng.standard_normal((mmq.MMQ_AUTO_MAX_T + 1, K)).astype(np.float32)), q8)
    dequantized = default_q8 + auto_long
    assert any(n.startswith("dequant_") and n.endswith("_q8_0") for n in dequantized), (default_q8, auto_long)
    assert "mmq_q8_0" not in prefill_q4k + decode_q8 + default_q8 + auto_long
    assert "mmq_q8_0" in auto_short, auto_short


def test_the_switch_is_read_from_the_environment(monkeypatch):
    cuda_backend()                                                            # skips without a GPU
    from worker.backend.cuda import CudaBackend

    monkeypatch.delenv("M0_CUDA_PREFILL_Q8", raising=False)
    assert CudaBackend().prefill_q8 == "auto"                                 # the default
    monkeypatch.setenv("M0_CUDA_PREFILL_Q8", "mma")
    assert CudaBackend().prefill_q8 == "mma"
    monkeypatch.setenv("M0_CUDA_PREFILL_Q8", "int4")
    with pytest.raises(ValueError, match="M0_CUDA_PREFILL_Q8"):
        CudaBackend()
    assert THRESHOLDS["matmul_q8x2"] == THRESHOLDS["matvec_q8x2"]             # one bound for one error
