"""FT-016 GEMM wrapper: prefill products go through cuBLAS on a bounded dequantized workspace.

Acceptance: for T > 4 tokens the CUDA backend dequantizes the stored weight tile by tile into a
float32 workspace of bounded size and multiplies with cuBLAS (cupy.matmul); the result matches
the NumPy reference on hypothesis-drawn shapes, also when the weight needs many tiles; the
weight itself stays in its stored format in device memory, and the workspace is accounted.
"""
import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stories.foundation._cuda_conformance import (
    check_product,
    checking_backend,
    examples,
    q8_prefill_path,
    random_weight,
)
from worker.backend.numpy import NumpyBackend
from worker.quant import FORMATS

Q = gguf.GGMLQuantizationType
REF = NumpyBackend()
pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True, scope="module")
def q8_products_dequantize():
    """These checks are of matmul.prefill_product: Q8_0 prefill products stay on it (the default path, auto, sends
    short ones to the int8 tensor cores, checked in test_ft016_int8_prefill_products.py)."""
    with q8_prefill_path("tf32x3"):
        yield


@pytest.mark.story("FT-016")
@pytest.mark.parametrize("qtype", list(FORMATS), ids=lambda q: q.name)   # every format of the registry
@settings(max_examples=examples(6), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), T=st.integers(5, 200), N=st.integers(1, 700), n_blocks=st.integers(1, 3))
def test_tiled_gemm_matches_reference_with_many_tiles(qtype, seed, T, N, n_blocks):
    import worker.backend.cuda as cuda
    from worker.backend.kernels.matmul import few_rows

    K = n_blocks * gguf.GGML_QUANT_SIZES[qtype][0] if gguf.GGML_QUANT_SIZES[qtype][0] > 1 else 37 * n_blocks
    assume(not few_rows(N, K, T))              # a wide weight of a few rows takes matvec, not the tiles
    b = checking_backend()
    rng = np.random.default_rng(seed)
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    weight = b.load_weight(w)
    with pytest.MonkeyPatch.context() as mp:   # tiles of at most 96 rows of 64: most shapes need several
        mp.setattr(cuda, "TILE_MAX_BYTES", 4 * 64 * 96)
        out = b.to_host(b.matmul(b.asarray(x), weight))
    ref_w = REF.load_weight(w)
    check_product(f"matmul:{qtype.name}", f"tiled T={T} N={N} K={K}", out, REF.matmul(x, ref_w), x, ref_w.dense())
    assert weight.nbytes == w.raw.nbytes, "the weight must stay in its stored format on the device"
    assert b.memory_report()["workspace"] > 0


@pytest.mark.story("FT-016")
def test_large_prefill_uses_bounded_workspace():
    """A SmolLM2-sized LM head (49152 x 576, Q8_0) for 100 tokens: the workspace stays at the bound."""
    import worker.backend.cuda as cuda

    b = checking_backend()
    rng = np.random.default_rng(7)
    w = random_weight(Q.Q8_0, (49152, 576), rng)
    x = rng.standard_normal((100, 576)).astype(np.float32)
    out = b.to_host(b.matmul(b.asarray(x), b.load_weight(w)))
    ref_w = REF.load_weight(w)
    check_product("matmul:Q8_0", "T=100 N=49152 K=576", out, REF.matmul(x, ref_w), x, ref_w.dense())
    assert b._workspace["dequant_tile"].nbytes <= cuda.TILE_MAX_BYTES
