"""GT-016 prefill experts on the device, checked without a GPU: moe.cu and moe_gemm.cu compiled for the
host by the system C++ compiler, each CUDA thread of a block run as a host fiber (stories/llama/_host_cuda.py;
__syncthreads and the warp exchanges are barriers, blocks run one after another in a shuffled order),
launched through the backend's own launchers (worker/backend/kernels/moe.py), so that their grids, block
sizes and argument order are checked as well. The tensor-core instructions (mma_tf32.cuh, mma_bf16.cuh,
mma_s8.cuh) are replaced by host versions that multiply the fragments as the PTX ISA lays them out (the TF32
one refuses an operand that is not a TF32 value: the split must hand the tensor cores exact TF32 values) and
count their calls, so each variant is seen to take its own instruction. The int8 one is checked on its own
against a product of fragments laid out from the PTX ISA's tables (and a wrong layout against it fails).
v5's asynchronous copies (cp_async.cuh) land only at the wait that covers them, so a read that comes too
early sees stale bytes.

  * moe_plan: the token-expert pairs sorted by expert exactly as NumPy's stable argsort, pos its inverse,
    the tile table each expert's run cut into tiles of 16, 32 or 64 rows, unused entries empty; hypothesis over
    T 1..600, k 1..4, E 2..32, with all tokens on one expert and tied router logits among the cases;
  * moe_route on tied logits: the lower expert first, as the reference's top_k_softmax;
  * the whole T >= 2 expert FFN (route, plan, gate/up + SwiGLU, down, weighted sum) against the NumPy
    backend's mixture_of_experts (its host routing) under the conformance row "moe" (plain NMSE 1e-6),
    and the down product alone within the prefill products' term-normalized bound ("matmul", 1e-11; v4's
    BF16 products "matmul_expert_bf16x2", 2.5e-11; v5's int8 products "matmul_expert_q8x2", 1e-8), for MXFP4
    (two TF32 terms; v4: two bfloat16 terms on the host's m16n8k16; v5: two int8 activation terms on its
    m16n8k32; inputs with one value 300 times the others in every 32-value block, its hard case, keep "moe"
    at about 2e-7) and Q8_0 (three), each tile height (16, 32, 64 rows: three warp layouts), every kernel variant
    (moe.MOE_GEMM_VARIANTS: v3 with its staged weight blocks at unaligned row sizes, e.g. MXFP4 rows of 96
    values = 51 bytes, its permuted k order, several k-steps and column blocks; v4 and v5 have kernels for
    MXFP4 alone and launch v3's for the other formats, checked once), and Q4_1 (staged 20-byte blocks) and
    Q4_K (256-value blocks, read by the fragments from global memory) at width 256.
The GPU runs the same comparisons in test_gt016_moe_prefill_on_device.py. Skipped where g++ or cpp is missing.
"""
from __future__ import annotations

import ctypes
import re
import shutil

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.paths import REPO_ROOT
from stories.foundation._cuda_conformance import THRESHOLDS, f32_tensor, nmse
from stories.gpt._moe_cases import expert_blocks
from stories.llama._host_cuda import (
    HOST_MMA_BF16,
    HOST_MMA_S8,
    THREADED_LAUNCH,
    THREADED_PRELUDE,
    build_host_library,
    device_function,
    host_entries,
    kernel_body,
)
from worker.backend.base import top_k_softmax
from worker.backend.cuda_runtime import NULL, kernel_source
from worker.backend.kernels import moe
from worker.backend.numpy import NumpyBackend
from worker.quant import FORMATS

pytestmark = [pytest.mark.story("GT-016"),
              pytest.mark.skipif(shutil.which("g++") is None or shutil.which("cpp") is None,
                                 reason="g++ and cpp are needed to build the kernels for the host")]

Q = gguf.GGMLQuantizationType
KERNELS = REPO_ROOT / "worker" / "backend" / "kernels"
HOST_FORMATS = ("mxfp4", "q8_0", "q4_1", "q4_k")      # of moe_gemm.cu's list: the host build compiles these alone
REF = NumpyBackend()
PAD = 16                              # worker/backend/cuda_memory.py's WEIGHT_TAIL_PAD
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_PRELUDE = THREADED_PRELUDE + r"""
#define __restrict__
#define __align__(n) __attribute__((aligned(n)))
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline int __popc(u32 v) { return __builtin_popcount(v); }
static inline void __syncwarp() { warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }
static inline int __shfl_xor_sync(unsigned, int v, int o) { return (int)shuffle_from(v, (threadIdx.x % 32) ^ o); }
static inline float2 make_float2(float a, float b) { return float2{a, b}; }

// cp.async (cp_async.cuh) on the host: a thread's copies wait in their committed groups until cp_async_wait<N>
// leaves at most N groups in flight, and land then, so that a read before the wait sees the old bytes, as it may
// on the device.
struct HostCopy { void* dst; u32 word; };
static std::vector<std::vector<HostCopy>> cp_groups_of[1024];   // a thread's committed groups, oldest first
static std::vector<HostCopy> cp_open_of[1024];                   // a thread's copies since its last commit
#define cp_groups cp_groups_of[threadIdx.x]
#define cp_open cp_open_of[threadIdx.x]
static const int cp_reset_at_start = (fiber_thread_start = [] { cp_groups.clear(); cp_open.clear(); }, 0);
static inline void cp_async4(void* smem, const void* gmem) {
    u32 w;
    std::memcpy(&w, gmem, 4);
    cp_open.push_back(HostCopy{smem, w});
}
static inline void cp_async_commit() { cp_groups.push_back(cp_open); cp_open.clear(); }
template <int N> static inline void cp_async_wait() {
    while (cp_groups.size() > (size_t)N) {
        for (const HostCopy& c : cp_groups.front()) std::memcpy(c.dst, &c.word, 4);
        cp_groups.erase(cp_groups.begin());
    }
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 on the host: the warp's fragments gathered as the
// PTX ISA lays them out (g = lane / 4, q = lane % 4), each product exact (TF32 x TF32 fits float32), the
// eight of an output summed in double and added once. An operand with any of its low 13 bits set is not
// a TF32 value: counted in mma_not_tf32 (the hardware would drop those bits).
static u32 mma_a[32][32][4], mma_b[32][32][2];
static std::atomic<long long> mma_not_tf32{0}, mma_tf32_count{0};
extern "C" long long host_mma_not_tf32() { return mma_not_tf32.exchange(0); }
extern "C" long long host_mma_tf32_count() { return mma_tf32_count.exchange(0); }
static inline void mma_tf32_16x8x8(float* d, const u32* a, const u32* b) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, q = l % 4;
    if (l == 0) ++mma_tf32_count;
    warp_barriers[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) { mma_a[w][l][i] = a[i]; if (a[i] & 0x1fffu) ++mma_not_tf32; }
    for (int i = 0; i < 2; ++i) { mma_b[w][l][i] = b[i]; if (b[i] & 0x1fffu) ++mma_not_tf32; }
    warp_barriers[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * q + (i & 1);
        double s = 0.0;
        for (int k = 0; k < 8; ++k) {
            const float av = __uint_as_float(mma_a[w][(row % 8) * 4 + k % 4][(row >= 8) + 2 * (k >= 4)]);
            const float bv = __uint_as_float(mma_b[w][col * 4 + k % 4][k >= 4]);
            s += (double)(av * bv);
        }
        d[i] = (float)((double)d[i] + s);
    }
    warp_barriers[w]->arrive_and_wait();
}
static inline void mma_tf32_16x8x8_free(float* d, const u32* a, const u32* b) { mma_tf32_16x8x8(d, a, b); }

"""

# v7's bfloat16 words of n staged slots (36 bytes: two MXFP4 blocks, at bytes 0 and 17), each block's scale words
# made from its scale byte as the kernels' staging makes them: out[slot][block][lane q][4].
_BF16_WORDS_ENTRY = r"""
extern "C" void host_mxfp4_bf16_words(const u8* slots, int n, u32* out) {
    for (int i = 0; i < n; ++i)
        for (int q = 0; q < 4; ++q) {
            const u8* slot = slots + MOE_RAW * i;
            moe_mxfp4_bf16_words<0>(slot, q, moe_mxfp4_scale_words(slot[0]), out + ((2 * i) * 4 + q) * 4);
            moe_mxfp4_bf16_words<MOE_MXFP4_BYTES>(slot, q, moe_mxfp4_scale_words(slot[MOE_MXFP4_BYTES]),
                                                  out + ((2 * i + 1) * 4 + q) * 4);
        }
}
"""

# One m16n8k32 int8 product of one warp on the host version: lane l's fragments a[l][0..3], b[l][0..1], d[l][0..3].
_MMA_S8_ENTRY = r"""
extern "C" void host_mma_s8_warp(const u32* a, const u32* b, int* d) {
    launch(1, 1, 32, 1, [=] { const int l = threadIdx.x; mma_s8_16x8x32(d + 4 * l, a + 4 * l, b + 2 * l); });
}
"""


def _gemm_source() -> str:
    """moe_gemm.cu with its format list cut to HOST_FORMATS (each with the exactness flag the source gives it)."""
    text = kernel_body(KERNELS / "moe_gemm.cu")
    listed = dict(re.findall(r"X\((\w+), (true|false)\)", text))
    assert set(HOST_FORMATS) <= set(listed) and set(listed) == moe.MOE_GEMM_FORMATS
    for define in ("DEFINE_MOE_DQ", "DEFINE_MOE_GEMM_V3"):      # v4's one format (MXFP4) is a host format
        assert f"FOR_EACH_MOE_FORMAT({define})" in text
        text = text.replace(f"FOR_EACH_MOE_FORMAT({define})",
                            " ".join(f"{define}({f}, {listed[f]})" for f in HOST_FORMATS))
    return text



@pytest.fixture(scope="module")
def host_moe(tmp_path_factory):
    for name in ("mma_tf32_16x8x8", "mma_bf16_16x8x16", "mma_s8_16x8x32", "cp_async_wait"):   # the host versions'
        assert name in kernel_source("moe_gemm.cu")
    helpers = "".join(device_function(KERNELS / "common.cuh", n) for n in ("load_f16", "bf16_bits_to_f32"))
    helpers += device_function(KERNELS / "vecdot.cuh", "fp4x4_doubled")
    helpers += "".join(device_function(KERNELS / "mma_bf16.cuh", n)
                       for n in ("bf16_round_bits", "bf16_split_bits", "bf16_pack"))
    kernels = kernel_body(KERNELS / "moe.cu") + _gemm_source()
    headers = "".join(kernel_body(KERNELS / h) for h in ("iq_tables.cuh", "quant.cuh", "tf32.cuh", "activation.cuh"))
    text = _PRELUDE + HOST_MMA_S8 + HOST_MMA_BF16 + helpers + headers + THREADED_LAUNCH + _MMA_S8_ENTRY + kernels
    return build_host_library(text + host_entries(kernels) + _BF16_WORDS_ENTRY, tmp_path_factory.mktemp("moe"),
                              "moe_host", timeout=900)


class HostBackend:
    """Just enough of a CudaBackend for the launchers: `_launch` runs the host build of the kernel."""

    def __init__(self, lib, seed: int = 0):
        self.lib, self.seed, self.launched = lib, seed, []

    def _launch(self, module, name, grid, block, args, *, keeps_quantized_input: bool = False) -> None:
        gx, gy = (grid + (1,))[:2] if isinstance(grid, tuple) else (grid, 1)
        self.launched.append(name)
        self.seed += 1
        getattr(self.lib, f"host_{name}")(ctypes.c_uint(int(gx)), ctypes.c_uint(int(gy)), ctypes.c_uint(int(block)),
                                          ctypes.c_uint(self.seed), *(_c(a) for a in args))


def _c(a):
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    if a is NULL or (isinstance(a, np.uint64) and int(a) == 0):
        return ctypes.c_void_p(0)
    return {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float32: ctypes.c_float}[type(a)](a)


# -- the plan --------------------------------------------------------------------------------------

def _expected_tiles(experts: np.ndarray, E: int, n_tiles: int, tile_rows: int) -> np.ndarray:
    counts = np.bincount(experts, minlength=E)
    starts = np.concatenate([[0], np.cumsum(counts)])
    rows = [(e, starts[e] + i, min(tile_rows, counts[e] - i)) for e in range(E)
            for i in range(0, counts[e], tile_rows)]
    table = np.zeros((n_tiles, 4), np.int32)
    table[:len(rows), :3] = np.asarray(rows, np.int32).reshape(-1, 3)
    return table


def _plan(k, experts: np.ndarray, E: int, tile_rows: int, threads: int = moe.MOE_PLAN_THREADS):
    n_pairs = experts.size
    n_tiles = moe.max_tiles(n_pairs, E, tile_rows)
    order, pos = np.full(n_pairs, -1, np.int32), np.full(n_pairs, -1, np.int32)
    tiles = np.full((n_tiles, 4), -7, np.int32)
    moe.plan(k, np.ascontiguousarray(experts, np.int32).reshape(-1), order, pos, tiles, n_pairs, E, n_tiles,
             tile_rows, threads=threads)
    return order, pos, tiles


def _check_plan(k, experts: np.ndarray, E: int, tile_rows: int = 64, threads: int = moe.MOE_PLAN_THREADS) -> None:
    flat = experts.reshape(-1)
    order, pos, tiles = _plan(k, flat, E, tile_rows, threads)
    want = np.argsort(flat, kind="stable")
    np.testing.assert_array_equal(order, want)
    np.testing.assert_array_equal(pos[order], np.arange(flat.size))
    np.testing.assert_array_equal(tiles, _expected_tiles(flat, E, tiles.shape[0], tile_rows))


@st.composite
def routings(draw):
    """experts [T, k]: k distinct experts a token (as moe_route picks them), drawn from a skewed set."""
    T, E = draw(st.integers(1, 600)), draw(st.integers(2, 32))
    k = draw(st.integers(1, min(4, E)))
    seed = draw(st.integers(0, 2**31))
    mode = draw(st.sampled_from(["random", "one-set", "few"]))
    rng = np.random.default_rng(seed)
    if mode == "one-set":                                 # every token the same experts
        return np.tile(rng.choice(E, size=k, replace=False), (T, 1)).astype(np.int32), E
    pool = E if mode == "random" else min(E, k + 1)
    return np.stack([rng.choice(pool, size=k, replace=False) for _ in range(T)]).astype(np.int32), E


@settings(max_examples=25, **SETTINGS)
@given(case=routings(), tile_rows=st.sampled_from(moe.MOE_TILE_ROWS))
def test_plan_sorts_pairs_by_expert_stably_and_tiles_each_run(host_moe, case, tile_rows):
    experts, E = case
    _check_plan(HostBackend(host_moe), experts, E, tile_rows)


@pytest.mark.parametrize("T,k,E", [(600, 1, 2), (512, 4, 32), (130, 4, 4), (2, 1, 32), (1, 4, 32)])
def test_plan_with_every_token_on_one_expert(host_moe, T, k, E):
    experts = np.tile(np.arange(E - k, E, dtype=np.int32), (T, 1))         # the last experts, the rest idle
    _check_plan(HostBackend(host_moe), experts, E)


@pytest.mark.parametrize("threads", [32, 64, 1024])
def test_plan_is_the_same_whatever_the_block(host_moe, threads):
    """Chunks of blockDim pairs, several warps a chunk: one warp a chunk to the whole block."""
    rng = np.random.default_rng(threads)
    experts = np.stack([rng.choice(8, size=3, replace=False) for _ in range(300)]).astype(np.int32)
    _check_plan(HostBackend(host_moe), experts, 8, 32, threads)


def test_route_breaks_ties_towards_the_lower_expert(host_moe):
    rng = np.random.default_rng(5)
    T, E, k_used = 40, 16, 4
    logits = np.round(rng.standard_normal((T, E)) * 2).astype(np.float32)     # many equal logits
    logits[0] = 1.0                                                            # all tied
    experts, weights = np.full((T, k_used), -1, np.int32), np.full((T, k_used), np.nan, np.float32)
    moe.route(HostBackend(host_moe), logits, experts, weights, T, E, k_used)
    want_e, want_w = top_k_softmax(logits.astype(np.float64), k_used)
    np.testing.assert_array_equal(experts, want_e)
    np.testing.assert_allclose(weights, want_w, rtol=1e-6)


# -- the int8 tensor-core product ---------------------------------------------------------------------

def _pack_s8(values) -> np.uint32:
    """Four int8 values as one register, the first in the lowest byte."""
    return np.ascontiguousarray(values, np.int8).view(np.uint32)[0]


def _s8_fragments(A: np.ndarray, B: np.ndarray, a_order=(0, 1, 2, 3)):
    """A [16, 32] and B [32, 8] as the warp's fragments of mma.m16n8k32 .s8 (PTX ISA, "Matrix Fragments for
    mma.m16n8k32": a0 rows g, a1 rows g + 8, a2 and a3 the same with k + 16; b0 k 4q.., b1 k 4q + 16..);
    a_order permutes the four A registers (a wrong layout)."""
    a, b = np.zeros((32, 4), np.uint32), np.zeros((32, 2), np.uint32)
    for lane in range(32):
        g, q = divmod(lane, 4)
        regs = [_pack_s8(A[g + 8 * (i % 2), 4 * q + 16 * (i // 2):4 * q + 16 * (i // 2) + 4]) for i in range(4)]
        a[lane] = [regs[i] for i in a_order]
        b[lane] = [_pack_s8(B[4 * q + 16 * j:4 * q + 16 * j + 4, g]) for j in range(2)]
    return a, b


def _s8_outputs(d: np.ndarray) -> np.ndarray:
    """The warp's d registers [32, 4] as D [16, 8]: d0, d1 row g columns 2q, 2q + 1; d2, d3 row g + 8."""
    D = np.zeros((16, 8), np.int64)
    for lane in range(32):
        g, q = divmod(lane, 4)
        for i in range(4):
            D[g + 8 * (i // 2), 2 * q + i % 2] = d[lane, i]
    return D


def test_host_int8_mma_follows_the_ptx_fragment_layout(host_moe):
    """D = A B + C for int8 A [16, 32], B [32, 8] at the extremes (-128, 127), the fragments laid out from the PTX
    ISA's tables; with two A registers swapped (rows g + 8 and k + 16 exchanged) the product is another."""
    rng = np.random.default_rng(8)
    A = rng.integers(-128, 128, (16, 32)).astype(np.int8)
    B = rng.integers(-128, 128, (32, 8)).astype(np.int8)
    A[0, :], B[:, 0] = -128, -128                         # the largest sum: 32 * 2^14
    C = rng.integers(-2**20, 2**20, (16, 8))
    want = A.astype(np.int64) @ B.astype(np.int64) + C
    for a_order, right in (((0, 1, 2, 3), True), ((0, 2, 1, 3), False)):
        a, b = _s8_fragments(A, B, a_order)
        d = np.zeros((32, 4), np.int32)
        for lane in range(32):
            g, q = divmod(lane, 4)
            d[lane] = [C[g + 8 * (i // 2), 2 * q + i % 2] for i in range(4)]
        host_moe.host_mma_s8_warp(_c(a), _c(b), _c(d))
        assert host_moe.host_mma_s8_count() == 1
        assert np.array_equal(_s8_outputs(d), want) == right


def test_v7_bfloat16_words_are_gguf_py_values_exactly(host_moe):
    """v7 builds MXFP4's weight values as bfloat16 bits from the codes and scales them by bfloat16 multiplies
    (moe_mxfp4_bf16_words): for every scale byte 0..255 (e8 = 0, 1: subnormal products; e8 > 128: two multiplies;
    255: E8M0's NaN, which gguf-py reads as 2^128 and overflows as we do) and every code at every position, the
    words hold gguf-py's dequantized values exactly, in the k order stage_a writes the activations in: lane q's
    word i holds k = 4q + i % 2 + 16 (i // 2) in its low half and k + 2 in its high half."""
    rng = np.random.default_rng(7)
    n = 256 * 2
    blocks = np.zeros((2 * n, 17), np.uint8)             # two blocks a slot, every scale byte twice
    blocks[:, 0] = np.tile(np.arange(256, dtype=np.uint8), 4)
    codes = rng.integers(0, 16, (2 * n, 32)).astype(np.uint8)
    codes[:32, :] = np.arange(32)[None, :] % 16           # every code at every position
    codes[16:32, :] = (np.arange(32)[None, :] + 8) % 16
    blocks[:, 1:] = codes[:, :16] | (codes[:, 16:] << 4)
    slots = np.zeros((n, 36), np.uint8)                  # moe_gemm.cu's MOE_RAW bytes a slot
    slots[:, :17], slots[:, 17:34] = blocks[0::2], blocks[1::2]
    out = np.zeros((n, 2, 4, 4), np.uint32)
    host_moe.host_mxfp4_bf16_words(_c(slots), n, _c(out))
    got = np.zeros((n, 2, 32), np.float32)
    for q in range(4):
        for i in range(4):
            k = 4 * q + i % 2 + 16 * (i // 2)
            words = out[:, :, q, i]
            got[:, :, k] = ((words & 0xFFFF) << 16).view(np.float32)
            got[:, :, k + 2] = (words & 0xFFFF0000).view(np.float32)
    with np.errstate(over="ignore"):
        want = gguf.quants.dequantize(blocks.reshape(-1), Q.MXFP4).reshape(n, 2, 32)
    # gguf-py's float32 values are bfloat16 values (E2M1 times a power of two) but where they overflow float32
    assert np.array_equal(got, want), np.argwhere(got != want)[:5]


# -- the whole expert FFN ----------------------------------------------------------------------------

def _expert_weight(qtype, shape, rng):
    """A QuantTensor of random expert blocks (stories/gpt/_moe_cases.py) and its bytes with the device's tail pad."""
    tensor = expert_blocks(qtype, shape, rng)
    return tensor, np.concatenate([np.asarray(tensor.raw, np.uint8).reshape(-1), np.zeros(PAD, np.uint8)])


def _host_moe_ffn(k, x, logits, mats, biases, fmt, E, k_used, limit, alpha, tile_rows, variant):
    """The device path's launches (as CudaBackend.mixture_of_experts makes them) on host buffers."""
    T, D = x.shape
    F = mats[0][0].shape[1]
    n_pairs = T * k_used
    n_tiles = moe.max_tiles(n_pairs, E, tile_rows)
    experts, weights = np.full((T, k_used), -1, np.int32), np.full((T, k_used), np.nan, np.float32)
    moe.route(k, logits, experts, weights, T, E, k_used)
    order, pos, tiles = np.zeros(n_pairs, np.int32), np.zeros(n_pairs, np.int32), np.zeros((n_tiles, 4), np.int32)
    moe.plan(k, experts, order, pos, tiles, n_pairs, E, n_tiles, tile_rows)
    (gate, graw), (_, uraw), (down, draw) = mats
    rb_g, rb_d = (graw.size - PAD) // (E * F), (draw.size - PAD) // (E * D)
    h = np.full((n_pairs, F), np.nan, np.float32)
    moe.gate_up(k, fmt, x, order, k_used, tiles, n_tiles, tile_rows, graw, uraw, rb_g, F * rb_g, biases[0], biases[1],
                h, F, D, clamped=not (limit is None and alpha is None), limit=limit, alpha=alpha, variant=variant)
    y = np.full((n_pairs, D), np.nan, np.float32)
    moe.down(k, fmt, h, tiles, n_tiles, tile_rows, draw, rb_d, D * rb_d, biases[2], y, D, F, variant=variant)
    kernel_variant = moe.kernel_variant(variant, fmt)
    height = f"_r{tile_rows}" if kernel_variant in moe.PER_HEIGHT_VARIANTS else ""     # a kernel a tile height
    gate_up_variant = moe.GATE_UP_KERNELS.get(kernel_variant, kernel_variant)          # v8 runs v7's gate/up
    assert k.launched[-2:] == [f"moe_gate_up_{gate_up_variant}{height}_{fmt}",
                               f"moe_down_{kernel_variant}{height}_{fmt}"]
    out = np.full((T, D), np.nan, np.float32)
    moe.combine_rows(k, y, pos, weights, out, T, k_used, D)
    return out, h, y, experts, order


def _own_kernels(qtype) -> list[str]:
    """The variants with kernels of their own for the format: v4 and v5 of Q8_0, Q4_1 or Q4_K launch v3's
    kernels, already run as v3 (test_variants_without_kernels_for_a_format_take_v3s checks that they do)."""
    return [v for v in moe.MOE_GEMM_VARIANTS if moe.kernel_variant(v, FORMATS[qtype].kernel) == v]


@pytest.mark.parametrize("variant,qtype", [(v, q) for q in (Q.MXFP4, Q.Q8_0) for v in _own_kernels(q)],
                         ids=lambda p: p.name if isinstance(p, Q) else p)
@pytest.mark.parametrize("T,E,k_used,D,F,case,tile_rows", [
    (2, 4, 2, 64, 64, "random", 16), (5, 4, 2, 96, 64, "random", 64), (17, 8, 4, 64, 96, "random", 32),
    (70, 4, 2, 64, 64, "one-expert", 64), (70, 4, 2, 64, 64, "one-expert", 16), (9, 4, 4, 64, 64, "every-expert", 16),
    (40, 4, 3, 64, 96, "random", 32), (3, 32, 4, 64, 64, "plain-swiglu", 16), (6, 4, 2, 160, 224, "random", 32),
    (12, 4, 2, 64, 64, "one-large-value-a-block", 32), (4, 4, 2, 288, 64, "random", 32)])
def test_expert_ffn_matches_the_reference(host_moe, variant, qtype, T, E, k_used, D, F, case, tile_rows):
    _check_expert_ffn(host_moe, variant, qtype, T, E, k_used, D, F, case, tile_rows)


@pytest.mark.parametrize("variant,qtype,tile_rows", [(v, q, rows) for q, rows in ((Q.Q4_K, 32), (Q.Q4_1, 64))
                                                     for v in _own_kernels(q)],
                         ids=lambda p: p.name if isinstance(p, Q) else str(p))
def test_other_formats_match_the_reference(host_moe, variant, qtype, tile_rows):
    """Q4_K: 256-value blocks, which v3 reads from global memory by the fragment (not staged); Q4_1: 20-byte
    staged blocks with a minimum term, three TF32 terms."""
    _check_expert_ffn(host_moe, variant, qtype, 6, 4, 2, 256, 256, "random", tile_rows)


@pytest.mark.parametrize("variant", [v for v in moe.MOE_GEMM_VARIANTS if v != "v3"])
def test_variants_without_kernels_for_a_format_take_v3s(host_moe, variant):
    """v4 and v5 on Q8_0 (no BF16 or int8 kernels of their own): v3's kernels are launched, and they hold v3's
    bound (the launch names and the TF32 instruction are checked in _check_expert_ffn)."""
    assert moe.kernel_variant(variant, "q8_0") == "v3"
    _check_expert_ffn(host_moe, variant, Q.Q8_0, 2, 4, 2, 64, 64, "random", 16)


def _check_expert_ffn(host_moe, variant, qtype, T, E, k_used, D, F, case, tile_rows):
    rng = np.random.default_rng(T * 100 + E + int(qtype))
    k = HostBackend(host_moe)
    fmt = FORMATS[qtype].kernel
    mats = [_expert_weight(qtype, shape, rng) for shape in ((E, F, D), (E, F, D), (E, D, F))]
    biases = [rng.standard_normal((E, n)).astype(np.float32) * 0.1 for n in (F, F, D)]
    router = rng.standard_normal((E, D)).astype(np.float32)
    router_b = rng.standard_normal(E).astype(np.float32)
    if case == "one-expert":                              # every token's first choice: expert 1
        router_b[1] = 1e4
    x = rng.standard_normal((T, D)).astype(np.float32)
    if case == "one-large-value-a-block":                 # v5's int8 terms: the block's other values in the second
        x[:, ::32] *= 300.0
    limit, alpha = (None, None) if case == "plain-swiglu" else (7.0, 1.702)
    logits = (x @ router.T + router_b).astype(np.float32)    # the device path takes the router product's output
    out, h, y, experts, order = _host_moe_ffn(k, x, logits, mats, biases, fmt, E, k_used, limit, alpha, tile_rows,
                                              variant)
    assert host_moe.host_mma_not_tf32() == 0, "an mma operand was not a TF32 value"
    kernels = moe.kernel_variant(variant, fmt)
    assert (host_moe.host_mma_tf32_count() > 0) == (kernels == "v3"), "v3 multiplies on TF32 tensor cores, and only v3"
    assert (host_moe.host_mma_bf16_count() > 0) == (kernels in moe.MOE_BF16_VARIANTS), \
        "v4, v6, v7 and v8 multiply on BF16 tensor cores, and only they"
    assert (host_moe.host_mma_s8_count() > 0) == (kernels == "v5"), "v5 multiplies on int8 tensor cores, and only v5"
    if case == "one-expert":
        assert (experts[:, 0] == 1).all()
    if case == "every-expert":
        assert len(np.unique(experts)) == E
    ws = [REF.load_weight(t) for t in (f32_tensor(router), f32_tensor(router_b), mats[0][0], f32_tensor(biases[0]),
                                       mats[1][0], f32_tensor(biases[1]), mats[2][0], f32_tensor(biases[2]))]
    ref = REF.mixture_of_experts(x, *ws, k_used, limit=limit, alpha=alpha)
    assert np.isfinite(out).all()
    value = nmse(out, ref)
    assert value <= THRESHOLDS["moe"], f"moe NMSE {value:.3e}"
    # the down product alone, held to the prefill products' term-normalized bound
    dense_down = REF.load_weight(mats[2][0]).dense().astype(np.float64)
    ex = experts.reshape(-1)[order]
    want = np.einsum("rf,rdf->rd", h.astype(np.float64), dense_down[ex]) + biases[2][ex]
    scale = np.einsum("rf,rdf->rd", np.abs(h.astype(np.float64)), np.abs(dense_down[ex])) + np.abs(biases[2][ex])
    term_nmse = float(np.sum((y - want) ** 2) / np.sum(scale ** 2))
    row = "matmul_expert_bf16x2" if kernels in moe.MOE_BF16_VARIANTS else {"v3": "matmul",
                                                                           "v5": "matmul_expert_q8x2"}[kernels]
    assert term_nmse <= THRESHOLDS[row], f"down product term-normalized NMSE {term_nmse:.3e} ({row})"
