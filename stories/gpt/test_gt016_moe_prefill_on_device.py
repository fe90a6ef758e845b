"""GT-016 GPT-OSS prefill experts on the device (T >= 2 tokens): routed, grouped by expert and multiplied on
the GPU (worker/backend/kernels/moe.py, moe_gemm.cu), with no host transfer, so a prefill chunk is captured
as a CUDA graph.

Acceptance, against the NumPy backend's mixture_of_experts (its host routing, float32 products):
- T in {2, 3, 4, 5, 17, 64, 130, 512} on the tiny GPT-OSS fixture's shape (width 64, 4 experts, 2 a token)
  and on GPT-OSS-like layers (width 512 and 1024, 32 experts, 4 a token), MXFP4 and Q8_0 experts, GPT-OSS's
  clamped SwiGLU and the plain one: the conformance row "moe", plain NMSE <= 1e-6. The threshold: each
  product term is within 2^-21 of itself (split TF32, the prefill products' bound, NMSE near 1e-13 for a
  product), SwiGLU runs in double, the weighted sum in float32, so the outputs differ from the reference by
  rounding alone (NMSE 1e-14..1e-12); a row routed to the wrong expert, a missing expert, a lost low TF32
  term (NMSE ~1e-7 after two products, GT-016's host test) or a forgotten element (NaN: outputs are
  poisoned) exceeds it. v5's int8 activation terms (a 32-value block's values within max|block| / 64516) leave
  more: about 2e-9 on random inputs and 2e-7 with one value 300 times the others in every block (the host
  test's hard case), where a lost second term gives 1e-4. The CUDA router product may differ from the
  reference's in the last bits, which could reorder two experts whose logits tie to within that: random
  routers make this vanishingly rare.
- expert loads at the edges: every token on the same experts (the others idle), every expert used.
- the device path is the one taken: Backend.mixture_of_experts (the host routing) is patched to fail and
  to_host is counted (none).
- each grouped product on the tensor cores (gate, up, down; every tile height) within the prefill products'
  term-normalized bound against float64 ("matmul_expert", 1e-11; v4's BF16 products on MXFP4, activations as
  two bfloat16 terms: "matmul_expert_bf16x2", 2.5e-11; v5's int8 products on MXFP4, activations as two int8
  terms a 32-value block: "matmul_expert_q8x2", 1e-8, the decode products' row for the same activations).
- a GPT-OSS prefill chunk of the tiny fixture is captured as a CUDA graph on its second sighting and its
  replays give the op-by-op logits bit for bit.
- every grouped kernel variant (kernels/moe.py MOE_GEMM_VARIANTS, M0_CUDA_MOE_GEMM: v3 with its pipelined
  loads, staged weight blocks, permuted k order and activations split as they are stored; v4, v3 on BF16
  tensor cores for MXFP4, v3's kernels for the other formats; v5, the same tiles on int8 tensor cores for
  MXFP4, v3's kernels for the other formats)
  under every comparison above, the capture included; also on Q4_1 and Q5_0 (staged blocks of 20 and 22 bytes) and
  Q4_K (256-value blocks read by the fragment).
The kernels' logic runs on the CPU in test_gt016_moe_prefill_on_the_host.py.
"""
import functools

import gguf
import numpy as np
import pytest

from stories.foundation._cuda_conformance import check, checking_backend, cuda_backend
from stories.gpt._moe_cases import f32, moe_layer
from worker.backend.base import Backend
from worker.backend.kernels import moe
from worker.backend.numpy import NumpyBackend

pytestmark = [pytest.mark.gpu, pytest.mark.story("GT-016")]

Q = gguf.GGMLQuantizationType
REF = NumpyBackend()
TOKENS = [2, 3, 4, 5, 17, 64, 130, 512]
LIMIT, ALPHA = 7.0, 1.702                          # GPT-OSS's SwiGLU (worker/models/gpt_oss.py)
# The specification: the NumPy backend's mixture_of_experts is the base class's host routing (kept here,
# before device_path_only patches the class attribute).
_ORIGINAL_MOE = Backend.mixture_of_experts


@pytest.fixture(params=moe.MOE_GEMM_VARIANTS)
def variant(request, monkeypatch):
    """The grouped kernels' variant (M0_CUDA_MOE_GEMM) the backend's launches take."""
    monkeypatch.setattr(moe, "MOE_GEMM_VARIANT", request.param)
    return request.param


@pytest.fixture
def device_path_only(monkeypatch, variant):
    """Fail the test if the host routing runs; count host transfers."""
    def host_routing(*args, **kwargs):
        raise AssertionError("mixture_of_experts fell back to the host routing")

    monkeypatch.setattr(Backend, "mixture_of_experts", host_routing)
    b = checking_backend()
    transfers = []
    to_host = type(b).to_host
    monkeypatch.setattr(type(b), "to_host", lambda self, x: transfers.append(x.shape) or to_host(self, x))
    return b, transfers


@functools.lru_cache(maxsize=4)
def _layer(qtype, E, D, F, favourite):
    return moe_layer(qtype, E, D, F, np.random.default_rng(E * D + F), favourite=list(favourite))


def _compare(b, transfers, qtype, T, E, k_used, D, F, seed, *, favourite=(), clamped=True):
    rng = np.random.default_rng(seed)
    layer = _layer(qtype, E, D, F, tuple(favourite))
    x = rng.standard_normal((T, D)).astype(np.float32)
    limit, alpha = (LIMIT, ALPHA) if clamped else (None, None)
    before = len(transfers)
    out = b.mixture_of_experts(b.asarray(x), *[b.load_weight(t) for t in layer], k_used, limit=limit, alpha=alpha)
    assert len(transfers) == before, "the device path copied something to the host"
    assert getattr(b, "moe_host_reason", None) is None
    want = _ORIGINAL_MOE(REF, x, *[REF.load_weight(t) for t in layer], k_used, limit=limit, alpha=alpha)
    check("moe", f"{moe.MOE_GEMM_VARIANT} {qtype.name} T={T} E={E} k={k_used} D={D} F={F}"
          f"{' plain' if not clamped else ''}",
          b.to_host(out), want)
    return out




@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("T", TOKENS)
def test_tiny_fixture_shape(device_path_only, qtype, T):
    _compare(*device_path_only, qtype, T, E=4, k_used=2, D=64, F=64, seed=T)


@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("T,width", [(T, 512) for T in TOKENS] + [(5, 1024), (512, 1024)])
def test_gpt_oss_like_layer(device_path_only, qtype, T, width):
    _compare(*device_path_only, qtype, T, E=32, k_used=4, D=width, F=width, seed=1000 + T + width)


@pytest.mark.parametrize("T", [3, 130])
def test_plain_swiglu(device_path_only, T):
    _compare(*device_path_only, Q.MXFP4, T, E=8, k_used=2, D=128, F=96, seed=7 + T, clamped=False)


@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("T,k_used", [(512, 4), (130, 1), (5, 2)])
def test_every_token_on_the_same_experts(device_path_only, qtype, T, k_used):
    """One expert's run spans several tiles (512 x 4 pairs on 4 experts: 8 tiles each), the others idle."""
    _compare(*device_path_only, qtype, T, E=32, k_used=k_used, D=256, F=192, seed=T + k_used,
             favourite=tuple(range(5, 5 + k_used)))


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q5_0, Q.Q4_K], ids=lambda q: q.name)
@pytest.mark.parametrize("T", [5, 130])
def test_other_grouped_formats(device_path_only, qtype, T):
    _compare(*device_path_only, qtype, T, E=8, k_used=2, D=256, F=256, seed=50 + T)


def test_every_expert_used(device_path_only):
    layer = _layer(Q.MXFP4, 32, 256, 256, ())
    x = np.random.default_rng(3).standard_normal((130, 256)).astype(np.float32)      # _compare's input, seed 3
    logits = REF.matmul(x, REF.load_weight(layer[0]), REF.load_weight(layer[1]))
    assert len(np.unique(np.argsort(-logits, axis=-1, kind="stable")[:, :4])) == 32
    _compare(*device_path_only, Q.MXFP4, 130, E=32, k_used=4, D=256, F=256, seed=3)


def test_formats_without_grouped_kernels_route_on_the_host_and_say_why():
    b = checking_backend()
    rng = np.random.default_rng(11)
    layer = list(moe_layer(Q.MXFP4, 4, 64, 64, rng))
    layer[2] = layer[4] = moe_layer(Q.Q4_0, 4, 64, 64, rng)[2]                     # gate, up Q4_0: grouped
    x = rng.standard_normal((6, 64)).astype(np.float32)
    b.mixture_of_experts(b.asarray(x), *[b.load_weight(t) for t in layer], 2, limit=LIMIT, alpha=ALPHA)
    assert b.moe_host_reason is None
    layer[6] = f32(rng.standard_normal((4, 64, 64)), "down")                     # F32 experts: no grouped kernel
    out = b.mixture_of_experts(b.asarray(x), *[b.load_weight(t) for t in layer], 2, limit=LIMIT, alpha=ALPHA)
    assert "f32" in b.moe_host_reason
    want = _ORIGINAL_MOE(REF, x, *[REF.load_weight(t) for t in layer], 2, limit=LIMIT, alpha=ALPHA)
    check("moe", "host routing F32 down T=6", b.to_host(out), want)


def test_a_gpt_oss_prefill_chunk_is_captured_and_replayed(variant):
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    cuda_backend()                                                     # skips without a usable GPU
    graphed = load_model(GGUFModelFile.open(tiny_model_path("gpt-oss")), CudaBackend(decode_graphs=True))
    eager = load_model(GGUFModelFile.open(tiny_model_path("gpt-oss")), CudaBackend(decode_graphs=False))
    prompt = np.random.default_rng(12).integers(0, 40, 37)          # the tiny models' vocabulary: 40
    b = graphed.backend
    cache = graphed.new_cache(64)
    try:
        rows = [b.to_host(graphed.forward(prompt, cache, 0)) for _ in range(3)]
    finally:
        b.free_kv_cache(cache)
    stats = b.graphs.stats
    assert stats["failures"] == [], stats
    assert stats["prefill_captures"] == 1 and stats["prefill_replays"] >= 1, stats
    ref_cache = eager.new_cache(64)
    try:
        ref = eager.backend.to_host(eager.forward(prompt, ref_cache, 0))
    finally:
        eager.backend.free_kv_cache(ref_cache)
    for row in rows:
        np.testing.assert_array_equal(row, ref)


def _zeros_like(tensor):
    """The same stored type and shape, every value 0 (all-zero blocks: scale 0 or 2^-127, codes 0)."""
    from worker.quant import QuantTensor

    return QuantTensor("zero", tensor.qtype, tensor.shape, np.zeros(np.asarray(tensor.raw).size, np.uint8))


@pytest.mark.parametrize("qtype", [Q.MXFP4, Q.Q8_0], ids=lambda q: q.name)
@pytest.mark.parametrize("tile_rows", [16, 32, 64])
@pytest.mark.parametrize("product", ["gate", "up"])
def test_grouped_products_keep_the_prefill_products_bound(variant, qtype, tile_rows, product):
    """Each grouped product on the tensor cores against float64 under the prefill products' term-normalized
    threshold ("matmul_expert", 1e-11; v4 and v5 on MXFP4 their own rows, as above), so the split's low terms
    (v5: the activations' second int8 term) are all there on the hardware. The SwiGLU
    epilogue is made to pass one product through: alpha = 0 and no limit give g * 0.5 * (u + 1); with a zero
    up weight and up bias 1 that is g, with a zero gate weight and gate bias 2 it is u + 1. The down product
    then multiplies that h."""
    from stories.foundation._cuda_conformance import record

    b = checking_backend()
    cp = b.cp
    rng = np.random.default_rng(tile_rows + int(qtype))
    T, E, k_used, D, F = 77, 8, 3, 256, 192
    layer = list(moe_layer(qtype, E, D, F, rng))
    live, dead = (2, 4) if product == "gate" else (4, 2)           # the product under test, the zeroed one
    layer[dead] = _zeros_like(layer[dead])
    layer[dead + 1] = f32(np.full((E, F), 1.0 if product == "gate" else 2.0), "bias")
    _, _, gate, gate_b, up, up_b, down, down_b = [b.load_weight(t) for t in layer]
    w_live, b_live = (REF.load_weight(layer[i]).dense().astype(np.float64) for i in (live, live + 1))
    w_down, b_down = (REF.load_weight(layer[i]).dense().astype(np.float64) for i in (6, 7))
    x = rng.standard_normal((T, D)).astype(np.float32)
    experts = np.stack([rng.choice(E, size=k_used, replace=False) for _ in range(T)]).astype(np.int32)
    n_pairs, n_tiles = T * k_used, moe.max_tiles(T * k_used, E, tile_rows)
    order, pos = cp.empty(n_pairs, np.int32), cp.empty(n_pairs, np.int32)
    tiles = cp.empty((n_tiles, 4), np.int32)
    moe.plan(b, cp.asarray(experts), order, pos, tiles, n_pairs, E, n_tiles, tile_rows)
    h = cp.full((n_pairs, F), np.nan, np.float32)
    moe.gate_up(b, gate.format, cp.asarray(x), order, k_used, tiles, n_tiles, tile_rows, gate.raw, up.raw,
                gate.row_bytes, F * gate.row_bytes, gate_b.raw.view(np.float32), up_b.raw.view(np.float32), h, F, D,
                clamped=True, limit=None, alpha=0.0, variant=variant)
    y = cp.full((n_pairs, D), np.nan, np.float32)
    moe.down(b, down.format, h, tiles, n_tiles, tile_rows, down.raw, down.row_bytes, D * down.row_bytes,
             down_b.raw.view(np.float32), y, D, F, variant=variant)
    order_h, h_h, y_h = b.to_host(order).astype(np.int64), b.to_host(h).astype(np.float64), b.to_host(y)
    ex, x64 = experts.reshape(-1)[order_h], x.astype(np.float64)[order_h // k_used]
    got = h_h if product == "gate" else h_h - 1.0
    want = np.einsum("rk,rnk->rn", x64, w_live[ex]) + b_live[ex]
    scale = np.einsum("rk,rnk->rn", np.abs(x64), np.abs(w_live[ex])) + np.abs(b_live[ex])
    value = float(np.sum((got - want) ** 2) / np.sum(scale ** 2))
    kernels = moe.kernel_variant(variant, gate.format)
    row = "matmul_expert_bf16x2" if kernels in moe.MOE_BF16_VARIANTS else {"v3": "matmul_expert",
                                                                           "v5": "matmul_expert_q8x2"}[kernels]
    assert value <= record(row, f"grouped {variant} {product} {qtype.name} T={T} rows={tile_rows}", value)
    want = np.einsum("rf,rdf->rd", h_h, w_down[ex]) + b_down[ex]
    scale = np.einsum("rf,rdf->rd", np.abs(h_h), np.abs(w_down[ex])) + np.abs(b_down[ex])
    value = float(np.sum((y_h - want) ** 2) / np.sum(scale ** 2))
    assert value <= record(row, f"grouped {variant} down {qtype.name} T={T} rows={tile_rows}", value)
