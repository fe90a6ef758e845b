"""GT-016: the measure that holds a decode token's expert FFN on two int8 activation terms (row moe_q8x2 of
stories/foundation/_cuda_conformance.py), checked without a GPU on a host model of the device's arithmetic.

The CUDA backend routes a decode token on the device and feeds x and SwiGLU's output h to the expert products as
int8 terms, each 32-value block quantized as vecdot.cuh's quantize_block_warp does (quantize_like_the_gpu, LT-019's
host model of it). Acceptance:
- that scheme with two terms stays under moe_q8x2's threshold on the conformance draws, the MXFP4 scales of
  2^-20..2^20 included, where its plain NMSE does not stay under the "moe" row's 1e-6;
- one term (llama.cpp's Q8_1 activations) does not;
- a wrong result (an expert's share lost, an error of 1e-2 on every output, NaN) fails it.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stories.foundation._cuda_conformance import THRESHOLDS, moe_decode_error, moe_tensors, nmse
from stories.llama.test_lt019_int8_products_on_the_host import quantize_like_the_gpu
from worker.backend.base import top_k_softmax
from worker.backend.numpy import NumpyBackend, _sigmoid

Q = gguf.GGMLQuantizationType
REF = NumpyBackend()
LIMIT, ALPHA = 7.0, 1.702
pytestmark = pytest.mark.story("GT-016")


def draw(qtype: Q, seed: int, E: int, k_used: int):
    """The draw of GT-016's test_mixture_of_experts at T = 1: x [1, 96] and the reference's weights."""
    rng = np.random.default_rng(seed)
    tensors = moe_tensors(qtype, rng, E, 96, 64)
    x = rng.standard_normal((1, 96)).astype(np.float32)
    return x, [REF.load_weight(t) for t in tensors], min(k_used, E)


def carried(v: np.ndarray, terms: int) -> np.ndarray:
    """What `terms` int8 terms a 32-value block carry of v [K] (the device's quantization)."""
    return quantize_like_the_gpu(np.asarray(v, np.float32).reshape(1, -1), terms)[2][0]


def device_model(x, ws, n_used: int, terms: int) -> np.ndarray:
    """The decode MoE as the device computes it, in float64: the reference's routing, x and h as int8 terms."""
    router, router_b, gate, gate_b, up, up_b, down, down_b = ws
    experts, weights = top_k_softmax(np.asarray(REF.matmul(x, router, router_b), np.float64), n_used)
    xq = carried(x[0], terms)
    out = np.zeros(down.shape[1])
    for w, e in zip(weights[0], experts[0]):
        e = int(e)
        g = np.asarray(gate.expert(e), np.float64) @ xq + gate_b.dense()[e]
        u = np.asarray(up.expert(e), np.float64) @ xq + up_b.dense()[e]
        g, u = np.minimum(g, LIMIT), np.clip(u, -LIMIT, LIMIT)
        h = g * _sigmoid(ALPHA * g) * (u + 1.0)
        out += w * (np.asarray(down.expert(e), np.float64) @ carried(h, terms) + down_b.dense()[e])
    return out[None]


def error(out, x, ws, n_used: int) -> float:
    return moe_decode_error(out, x, ws, n_used, limit=LIMIT, alpha=ALPHA)


@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), E=st.integers(2, 8), k_used=st.integers(1, 4))
def test_two_terms_stay_under_the_rows_threshold(qtype, seed, E, k_used):
    x, ws, k = draw(qtype, seed, E, k_used)
    assert error(device_model(x, ws, k, terms=2), x, ws, k) <= THRESHOLDS["moe_q8x2"]


def test_a_draw_whose_plain_nmse_two_terms_cannot_meet():
    """MXFP4 blocks of very different scales: the two-term result is as exact as its int8 blocks allow, yet its
    plain NMSE is far above the "moe" row's 1e-6 (found by sweeping the conformance draws through the host model)."""
    x, ws, k = draw(Q.MXFP4, 890454440, 2, 2)
    out = device_model(x, ws, k, terms=2)
    ref = REF.mixture_of_experts(x, *ws, k, limit=LIMIT, alpha=ALPHA)
    assert nmse(out, ref) > THRESHOLDS["moe"]
    assert error(out, x, ws, k) <= THRESHOLDS["moe_q8x2"]


DRAWS = [(1000 + seed, 2 + seed % 7, 1 + seed % 4) for seed in range(12)]


@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
def test_one_term_fails_it(qtype):
    """llama.cpp's activations (one int8 term): (64516 / 254)^2 = 6e4 times the error, above the row's threshold."""
    for seed, E, k_used in DRAWS:
        x, ws, k = draw(qtype, seed, E, k_used)
        assert error(device_model(x, ws, k, terms=1), x, ws, k) > THRESHOLDS["moe_q8x2"], (seed, E, k)


@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
def test_wrong_results_fail_it(qtype):
    for seed, E, k_used in DRAWS:
        x, ws, k = draw(qtype, seed, E, k_used)
        ref = REF.mixture_of_experts(x, *ws, k, limit=LIMIT, alpha=ALPHA).astype(np.float64)
        assert error(ref, x, ws, k) == 0.0
        assert error(ref * (1 + 1e-2), x, ws, k) > THRESHOLDS["moe_q8x2"], (seed, E, k)
        assert error(np.full_like(ref, np.nan), x, ws, k) == float("inf")
        _, weights = top_k_softmax(np.asarray(REF.matmul(x, ws[0], ws[1]), np.float64), k)
        if weights[0, 1:].sum() >= 0.01:            # the other experts' shares lost, where they weigh 1 % or more
            assert error(device_model(x, ws, 1, terms=2), x, ws, k) > THRESHOLDS["moe_q8x2"], (seed, E, k)
