"""LT-019 fused decode ops: fewer launches a layer, the same numbers.

The Backend ops `matmul_add` (a product added to the residual stream), `matmuls` (several products
of one input) and `matmul_swiglu` (the gated FFN's gate, up and SwiGLU) are defined by their
composition (worker/backend/base.py): on the NumPy reference they equal add(residual, matmul(...)),
[matmul(...), ...] and swiglu(matmul(...), matmul(...)) exactly, so the models' results on the
reference do not change. The CUDA backend runs a decode step's versions in one launch each
(kernels/vecdot.cu: the residual added in mmvq's epilogue; mmvq_segments for q/k/v; mmvq_swiglu
writing the down product's int8 input too), and rmsnorm_q8 keeps a decode row in registers
(kernels/norm.cu). On the GPU:

  * matmul_add, matmuls and matmul_swiglu equal the CUDA ops they replace bit for bit (the same
    per-row integer dot products and float epilogue, in the same order), and hold the int8 products'
    conformance thresholds against the NumPy reference (matvec_q8x2: term-normalized 1e-8);
  * each is one launch on an input whose int8 blocks a producer (rmsnorm) already wrote, and the
    down product after matmul_swiglu reads the blocks it wrote (no quantize_q8 launch);
  * rmsnorm_q8 holds rmsnorm's threshold (1e-10; the sum of squares in double) for every row width
    the models use, and its int8 blocks equal quantize_q8 of its float output byte for byte.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stories.foundation._cuda_conformance import (
    check,
    check_moe_decode,
    check_product,
    checking_backend,
    examples,
    f32_tensor,
    moe_tensors,
    product_op,
    random_weight,
)
from worker.backend.numpy import NumpyBackend

pytestmark = pytest.mark.story("LT-019")

Q = gguf.GGMLQuantizationType
REF = NumpyBackend()
INT8_FORMATS = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.MXFP4]     # vecdot.cuh
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _k(qtype, n_blocks: int) -> int:
    return max(256, n_blocks * gguf.GGML_QUANT_SIZES[qtype][0])


# -- CPU: the reference's definitions -----------------------------------------------------------------

def test_matmul_add_is_add_of_the_product_on_the_reference():
    rng = np.random.default_rng(1)
    x, r = rng.standard_normal((3, 40)).astype(np.float32), rng.standard_normal((3, 24)).astype(np.float32)
    w = REF.load_weight(f32_tensor(rng.standard_normal((24, 40)), "w"))
    bias = REF.load_weight(f32_tensor(rng.standard_normal(24), "b"))
    for b in (None, bias):
        np.testing.assert_array_equal(REF.matmul_add(x, w, b, residual=r), REF.add(r, REF.matmul(x, w, b)))


def test_matmuls_are_the_products_one_by_one_on_the_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    ws = [REF.load_weight(f32_tensor(rng.standard_normal((n, 32)), f"w{n}")) for n in (16, 8, 8)]
    bs = [REF.load_weight(f32_tensor(rng.standard_normal(16), "bq")), None, None]
    for biases in (None, bs):
        got = REF.matmuls(x, ws, biases)
        want = [REF.matmul(x, w, b) for w, b in zip(ws, biases or [None] * 3)]
        assert len(got) == 3
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)
    with pytest.raises(ValueError):
        REF.matmuls(x, ws, bs[:2])


class RecordingReference(NumpyBackend):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def matmuls(self, x, weights, biases=None):
        self.calls.append(f"matmuls:{len(weights)}")
        return super().matmuls(x, weights, biases)

    def matmul_add(self, x, w, bias=None, *, residual):
        self.calls.append("matmul_add")
        return super().matmul_add(x, w, bias, residual=residual)

    def matmul_swiglu(self, x, w_gate, w_up):
        self.calls.append("matmul_swiglu")
        return super().matmul_swiglu(x, w_gate, w_up)


def test_matmul_swiglu_is_swiglu_of_the_products_on_the_reference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 32)).astype(np.float32)
    wg, wu = (REF.load_weight(f32_tensor(rng.standard_normal((64, 32)), n)) for n in ("gate", "up"))
    np.testing.assert_array_equal(REF.matmul_swiglu(x, wg, wu), REF.swiglu(REF.matmul(x, wg), REF.matmul(x, wu)))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2"])
def test_the_models_use_the_fused_ops(arch):
    """Per layer: q/k/v in one matmuls (and gate/up with SwiGLU in matmul_swiglu for the llama family),
    the attention output and the FFN down product through matmul_add."""
    from fixtures.tiny_models import tiny_model_path
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    b = RecordingReference()
    model = load_model(GGUFModelFile.open(tiny_model_path(arch)), b)
    cache = model.new_cache(4)
    model.forward(np.array([1, 2, 3]), cache, 0)
    n = model.config.n_layers
    assert b.calls.count("matmuls:3") == n
    assert b.calls.count("matmul_swiglu") == b.calls.count("matmuls:2") == (0 if arch == "gpt2" else n)
    assert b.calls.count("matmul_add") == 2 * n


# -- GPU: the CUDA backend's fused launches ------------------------------------------------------------

class LaunchCounter:
    """Counts a backend's kernel launches by name while in use."""

    def __init__(self, backend):
        self.backend, self.names = backend, []

    def __enter__(self):
        launch = self.backend._launch

        def counted(module, name, *args, **kwargs):
            self.names.append(name)
            return launch(module, name, *args, **kwargs)

        self.backend._launch = counted
        return self

    def __exit__(self, *exc):
        del self.backend._launch


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", INT8_FORMATS, ids=lambda q: q.name)
@settings(max_examples=examples(6), **SETTINGS)
@given(seed=st.integers(0, 2**31), N=st.integers(1, 300), n_blocks=st.integers(1, 6), T=st.sampled_from([1, 2, 4]),
       with_bias=st.booleans())
def test_matmul_add_adds_the_residual_in_the_product(qtype, seed, N, n_blocks, T, with_bias):
    b = checking_backend()
    rng = np.random.default_rng(seed)
    K = _k(qtype, n_blocks)
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    r = rng.standard_normal((T, N)).astype(np.float32) * 3
    bias = f32_tensor(rng.standard_normal(N), "bias") if with_bias else None
    cw, cb = b.load_weight(w), (b.load_weight(bias) if bias else None)
    with LaunchCounter(b) as launches:
        fused = b.matmul_add(b.asarray(x), cw, cb, residual=b.asarray(r))
    assert launches.names == ["quantize_q8", f"mmvq_{qtype.name.lower()}"], launches.names
    separate = b.add(b.asarray(r), b.matmul(b.asarray(x), cw, cb))
    np.testing.assert_array_equal(b.to_host(fused), b.to_host(separate))
    ref_w, ref_b = REF.load_weight(w), (REF.load_weight(bias) if bias else None)
    check_product(f"{product_op(b, 'matvec', qtype, T)}:{qtype.name}", f"+residual T={T} N={N} K={K} bias={with_bias}",
                  b.to_host(fused), REF.matmul_add(x, ref_w, ref_b, residual=r), x, ref_w.dense(),
                  ref_b.dense() if ref_b else None)


@pytest.mark.gpu
@settings(max_examples=examples(12), **SETTINGS)
@given(seed=st.integers(0, 2**31), formats=st.lists(st.sampled_from(INT8_FORMATS), min_size=2, max_size=3),
       sizes=st.lists(st.integers(1, 300), min_size=3, max_size=3), n_blocks=st.integers(1, 4),
       T=st.sampled_from([1, 2, 3, 4]), with_bias=st.booleans())
def test_matmuls_run_every_segment_in_one_launch(seed, formats, sizes, n_blocks, T, with_bias):
    """q/k/v (or gate/up) of one rmsnorm output: one mmvq_segments launch, formats mixed as in Q4_K_M files."""
    b = checking_backend()
    rng = np.random.default_rng(seed)
    K = 256 * n_blocks                        # a whole number of blocks of every format
    ws = [random_weight(q, (n, K), rng, f"w{j}") for j, (q, n) in enumerate(zip(formats, sizes))]
    biases = [f32_tensor(rng.standard_normal(n), f"b{j}") if with_bias else None for j, n in enumerate(sizes)]
    x = rng.standard_normal((T, K)).astype(np.float32) * 2
    norm = f32_tensor(1 + 0.2 * rng.standard_normal(K), "norm")
    cws = [b.load_weight(w) for w in ws]
    cbs = [b.load_weight(t) if t else None for t in biases[:len(ws)]]
    h = b.rmsnorm(b.asarray(x), b.load_weight(norm), 1e-5)
    with LaunchCounter(b) as launches:
        ys = b.matmuls(h, cws, cbs)
    assert launches.names == ["mmvq_segments"], launches.names
    ref_h = REF.rmsnorm(x, REF.load_weight(norm), 1e-5)
    for j, (q, w, y) in enumerate(zip(formats, ws, ys)):
        alone = b.matmul(h, cws[j], cbs[j])
        np.testing.assert_array_equal(b.to_host(y), b.to_host(alone))
        ref_w, ref_b = REF.load_weight(w), (REF.load_weight(biases[j]) if with_bias else None)
        check_product(f"{product_op(b, 'matvec', q, T)}:{q.name}", f"segment {j} of {len(ws)} T={T} N={sizes[j]} K={K}",
                      b.to_host(y), REF.matmul(ref_h, ref_w, ref_b), ref_h, ref_w.dense(),
                      ref_b.dense() if ref_b else None)


@pytest.mark.gpu
@pytest.mark.story("LT-019", "LT-017")
@pytest.mark.parametrize("qtype", INT8_FORMATS, ids=lambda q: q.name)
@settings(max_examples=examples(5), **SETTINGS)
@given(seed=st.integers(0, 2**31), F32=st.integers(1, 12), n_blocks=st.integers(1, 4), T=st.sampled_from([1, 2, 3, 4]),
       D=st.integers(1, 200))
def test_matmul_swiglu_and_the_down_product(qtype, seed, F32, n_blocks, T, D):
    """gate/up + SwiGLU in one mmvq_swiglu launch; the down product (matmul_add) reads its int8 blocks."""
    from worker.backend.kernels import vecdot

    b = checking_backend()
    rng = np.random.default_rng(seed)
    K_QUANTS = (Q.Q4_K, Q.Q5_K, Q.Q6_K)          # rows of whole 256-value super-blocks (the down product's K)
    K, F = 256 * n_blocks, (256 * ((F32 + 7) // 8) if qtype in K_QUANTS else 32 * F32)
    wg, wu, wd = (random_weight(qtype, shape, rng, n) for n, shape in (("gate", (F, K)), ("up", (F, K)),
                                                                       ("down", (D, F))))
    x = rng.standard_normal((T, K)).astype(np.float32) * 2
    norm = f32_tensor(1 + 0.2 * rng.standard_normal(K), "norm")
    cg, cu, cd = b.load_weight(wg), b.load_weight(wu), b.load_weight(wd)
    h = b.rmsnorm(b.asarray(x), b.load_weight(norm), 1e-5)
    with LaunchCounter(b) as launches:
        y = b.matmul_swiglu(h, cg, cu)
    fmt = qtype.name.lower()                     # two blocks an SM or one (vecdot.py): the same sums
    assert launches.names == [f"mmvq_swiglu_x2_{fmt}" if fmt in vecdot.MMVQ_SWIGLU_X2 else f"mmvq_swiglu_{fmt}"]
    fused = b._q8_last
    assert fused is not None and fused[0] is y
    r = rng.standard_normal((T, D)).astype(np.float32)
    with LaunchCounter(b) as launches:
        out = b.matmul_add(y, cd, residual=b.asarray(r))
    assert launches.names == [f"mmvq_{qtype.name.lower()}"], launches.names     # no quantize_q8: y's blocks
    # the same numbers as the ops it replaces, and its int8 blocks are quantize_q8 of y
    separate = b.swiglu(b.matmul(h, cg), b.matmul(h, cu))
    np.testing.assert_array_equal(b.to_host(y), b.to_host(separate))
    xq, xds = vecdot.activation_buffers(b, T, F)
    vecdot.quantize(b, separate, xq, xds, T, F, b.matvec_terms)
    np.testing.assert_array_equal(b.to_host(fused[-1]), b.to_host(xds))
    np.testing.assert_array_equal(fused[-2].get(), xq.get())
    np.testing.assert_array_equal(b.to_host(out), b.to_host(b.add(b.asarray(r), b.matmul(separate, cd))))
    ref_h = REF.rmsnorm(x, REF.load_weight(norm), 1e-5)
    ref_y = REF.matmul_swiglu(ref_h, REF.load_weight(wg), REF.load_weight(wu))
    # Plain NMSE of SwiGLU after two int8 products (each within 1e-8 of its terms; a random row's
    # terms are up to ~sqrt(K) times its sum), as "gpt_ffn" holds two products in a row: 1e-6.
    check("matmul_swiglu_q8x2", f"{qtype.name} T={T} F={F} K={K}", b.to_host(y), ref_y, threshold=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype,K", [(Q.Q4_K, 4864), (Q.Q6_K, 4864), (Q.Q5_0, 4864), (Q.MXFP4, 2880), (Q.Q8_0, 2880),
                                     (Q.Q4_1, 8192)], ids=lambda v: getattr(v, "name", str(v)))
@pytest.mark.parametrize("T", [1, 2])
def test_long_rows_split_over_warps(monkeypatch, qtype, K, T):
    """Rows split over several warps (vecdot.py's mmvq_parts; here past 64 blocks of 32, as
    M0_CUDA_MMVQ_ONE_WARP_BLOCKS=0 asks: Qwen2.5's ffn_down, GPT-OSS's 2880), which changes the order of a
    row's sum: the products hold matvec_q8x2's term-normalized 1e-8 as before, and the fused ops still equal
    the ops they replace bit for bit (every kernel folds a row's parts in one order)."""
    from worker.backend.kernels import vecdot

    monkeypatch.setattr(vecdot, "MMVQ_ONE_WARP_BLOCKS", 0)
    assert vecdot.mmvq_parts(K) > 1
    b = checking_backend()
    rng = np.random.default_rng(K + T + int(qtype))
    N, F = 77, 64
    w, wg, wu = (random_weight(qtype, shape, rng, n) for n, shape in (("w", (N, K)), ("gate", (F, K)), ("up", (F, K))))
    x = rng.standard_normal((T, K)).astype(np.float32)
    r = rng.standard_normal((T, N)).astype(np.float32)
    cw, cg, cu = b.load_weight(w), b.load_weight(wg), b.load_weight(wu)
    y = b.matmul(b.asarray(x), cw)
    fused = b.matmul_add(b.asarray(x), cw, residual=b.asarray(r))
    np.testing.assert_array_equal(b.to_host(fused), b.to_host(b.add(b.asarray(r), y)))
    ref_w = REF.load_weight(w)
    check_product(f"{product_op(b, 'matvec', qtype, T)}:{qtype.name}", f"split rows T={T} N={N} K={K}",
                  b.to_host(y), REF.matmul(x, ref_w), x, ref_w.dense(), None)
    segments = b.matmuls(b.asarray(x), [cw, cg])
    np.testing.assert_array_equal(b.to_host(segments[0]), b.to_host(y))
    np.testing.assert_array_equal(b.to_host(segments[1]), b.to_host(b.matmul(b.asarray(x), cg)))
    h = b.matmul_swiglu(b.asarray(x), cg, cu)
    separate = b.swiglu(b.matmul(b.asarray(x), cg), b.matmul(b.asarray(x), cu))
    np.testing.assert_array_equal(b.to_host(h), b.to_host(separate))


@pytest.mark.gpu
def test_matmuls_fall_back_to_one_product_each():
    """Float weights and prefill-sized inputs take matmul's paths, one call per weight."""
    b = checking_backend()
    rng = np.random.default_rng(5)
    ws = [f32_tensor(rng.standard_normal((n, 64)), f"w{n}") for n in (32, 16)]
    for T in (1, 7):
        x = rng.standard_normal((T, 64)).astype(np.float32)
        ys = b.matmuls(b.asarray(x), [b.load_weight(w) for w in ws])
        for y, w in zip(ys, ws):
            ref_w = REF.load_weight(w)
            check_product("matvec" if T == 1 else "matmul", f"matmuls fallback T={T} N={w.shape[0]}", b.to_host(y),
                          REF.matmul(x, ref_w), x, ref_w.dense())


@pytest.mark.gpu
@pytest.mark.story("LT-019", "LT-013")
@settings(max_examples=examples(20), **SETTINGS)
@given(seed=st.integers(0, 2**31), T=st.sampled_from([1, 2, 3, 4]),
       D=st.sampled_from([32, 64, 96, 576, 896, 1024, 1056, 2048, 2880, 4096, 8192, 8224, 12288]),
       scale=st.sampled_from([1e-3, 1.0, 300.0]))
def test_rmsnorm_q8_for_every_row_width(seed, T, D, scale):
    from worker.backend.kernels import vecdot

    b = checking_backend()
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, D)) * scale).astype(np.float32)
    w = f32_tensor(1 + 0.3 * rng.standard_normal(D))
    h = b.rmsnorm(b.asarray(x), b.load_weight(w), 1e-5)
    check("rmsnorm", f"T={T} D={D} scale={scale} (rmsnorm_q8)", b.to_host(h), REF.rmsnorm(x, REF.load_weight(w), 1e-5))
    fused = b._q8_last
    assert fused is not None and fused[0] is h
    xq, xds = (a.copy() for a in fused[-2:])
    vecdot.quantize(b, h, fused[-2], fused[-1], T, D, b.matvec_terms)     # the same blocks, quantized on their own
    np.testing.assert_array_equal(b.to_host(xds), b.to_host(fused[-1]))
    np.testing.assert_array_equal(xq.get(), fused[-2].get())


@pytest.mark.gpu
@pytest.mark.story("LT-019", "GT-016")
@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("D", [96, 2880])
def test_moe_chosen_experts_gate_up_swiglu_in_one_launch(qtype, D):
    """GPT-OSS decode: the chosen experts' gate, up (with biases) and clamped SwiGLU in one mmvq_swiglu launch
    (expert slots), equal bit for bit to the two slot products and swiglu_q8 (M0_CUDA_FUSED_SWIGLU=0's path)."""
    from worker.backend.kernels import vecdot

    b = checking_backend()
    rng = np.random.default_rng(D + int(qtype))
    E, F, k_used = 6, 64, 4
    tensors = moe_tensors(qtype, rng, E, D, F)
    x = rng.standard_normal((1, D)).astype(np.float32)
    ws = [b.load_weight(t) for t in tensors]
    outs = {}
    try:
        for fused in (True, False):
            b.fused_swiglu = fused
            with LaunchCounter(b) as launches:
                outs[fused] = b.to_host(b.mixture_of_experts(b.asarray(x), *ws, k_used, limit=7.0, alpha=1.702))
            fmt = qtype.name.lower()
            kernel = f"mmvq_swiglu_x2_{fmt}" if fmt in vecdot.MMVQ_SWIGLU_X2 else f"mmvq_swiglu_{fmt}"
            assert (kernel in launches.names) == fused and ("swiglu_q8" in launches.names) != fused, launches.names
    finally:
        del b.fused_swiglu
    np.testing.assert_array_equal(outs[True], outs[False])
    assert b.matvec_terms == 2
    check_moe_decode(f"{qtype.name} fused D={D}", outs[True], x, [REF.load_weight(t) for t in tensors], k_used,
                     limit=7.0, alpha=1.702)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1, Q.Q4_K, Q.MXFP4, Q.Q6_K], ids=lambda q: q.name)
@pytest.mark.parametrize("T", [1, 2])
def test_output_product_rows_walked_together(qtype, T, monkeypatch):
    """A product of many rows (the output product over a vocabulary: N >= vecdot.MMVQ_JOINT_MIN_N) walks several
    rows a warp (mmvq_joint_<fmt>; Q6_K keeps one): each row's sum as one row a warp gives it, bit for bit."""
    from worker.backend.kernels import vecdot

    b = checking_backend()
    rng = np.random.default_rng(T + int(qtype))
    N, K = vecdot.MMVQ_JOINT_MIN_N + 3, (512 if qtype in (Q.Q4_K, Q.Q6_K) else 576)
    w = random_weight(qtype, (N, K), rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    cw = b.load_weight(w)
    with LaunchCounter(b) as launches:
        y = b.to_host(b.matmul(b.asarray(x), cw))
    joint = vecdot.MMVQ_JOINT_ROWS.get(qtype.name.lower(), 1) > 1
    assert launches.names[-1] == f"mmvq_{'joint_' if joint else ''}{qtype.name.lower()}", launches.names
    monkeypatch.setattr(vecdot, "MMVQ_JOINT_MIN_N", 10 ** 9)
    np.testing.assert_array_equal(y, b.to_host(b.matmul(b.asarray(x), cw)))
    ref_w = REF.load_weight(w)
    check_product(f"{product_op(b, 'matvec', qtype, T)}:{qtype.name}", f"joint rows T={T} N={N} K={K}",
                  y, REF.matmul(x, ref_w), x, ref_w.dense(), None)


def test_rmsnorm_q8_blocks_stay_within_what_the_kernel_can_launch():
    """GPT-OSS's 2880-wide row asked 1024 threads of a kernel whose registers allow fewer
    (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES on the H200): the launcher asks the compiled kernel."""
    import types

    from worker.backend.kernels import norm

    launches = []

    class Launcher:
        def _fn(self, module, name):
            return types.SimpleNamespace(max_threads_per_block=768)

        def _launch(self, module, name, grid, block, args):
            launches.append((name, block))

    for D in (576, 896, 2880, 8192):
        norm.rmsnorm_q8(Launcher(), None, None, None, None, None, 2, 1, D, 1e-5)
    assert launches == [("rmsnorm_q8", 576), ("rmsnorm_q8", 768), ("rmsnorm_q8", 768), ("rmsnorm_q8_wide", 256)]


def test_float_matvec_splits_few_rows_within_what_the_kernel_can_launch():
    """A product of few rows (GPT-OSS's router: 32 rows of 2880) splits each row over several warps, so
    that more than a handful of warps run it; many rows keep one warp a row; the block stays within the
    size the compiled kernel allows, and every lane keeps at least one 8-value chunk."""
    import types

    from worker.backend.kernels import matmul

    launches = []

    class Launcher:
        def _fn(self, module, name):
            return types.SimpleNamespace(max_threads_per_block=512)

        def _launch(self, module, name, grid, block, args):
            launches.append((name, grid, block, int(args[-1])))

    w = types.SimpleNamespace(format="f32", row_bytes=4 * 2880)
    for N, K, T in ((32, 2880, 1), (2880, 2880, 1), (64, 512, 1), (8, 200, 1), (32, 2880, 130)):
        matmul.matvec(Launcher(), w, None, None, None, None, N, K, T)
    assert launches == [("matvec_f32", (8, 1), 512, 4),     # 8 parts wanted, 4 fit 512 threads
                        ("matvec_f32", (720, 1), 128, 1),
                        ("matvec_f32", (16, 1), 256, 2),    # K / 256 = 2 chunks of 8 a lane at least
                        ("matvec_f32", (2, 1), 128, 1),
                        ("matvec_f32", (8, 33), 512, 4)]    # a router's prefill: 130 tokens in groups of 4


def test_few_rows_products_of_any_length_take_matvec():
    """A prefill product on a wide weight of few rows (GPT-OSS-20B's router: 32 x 2880) takes matvec's token
    groups, not the dequantized tiles and cuBLAS; square and narrow weights, and too much work, do not."""
    from worker.backend.kernels import matmul

    assert matmul.few_rows(32, 2880, 128) and matmul.few_rows(32, 2880, 512) and matmul.few_rows(4, 64, 16)
    assert not matmul.few_rows(32, 2880, 2048)              # T N K past FEW_ROWS_MAX_WORK
    assert not matmul.few_rows(64, 64, 16)                  # a tiny model's square products keep their path
    assert not matmul.few_rows(128, 2880, 16)               # more rows than FEW_ROWS
