"""LT-019 decode products on int8 activations, without a GPU: the vdot_<fmt> device functions of
worker/backend/kernels/vecdot.cuh, compiled for the host by the system C++ compiler (the CUDA
integer intrinsics __dp4a, __byte_perm, __funnelshift_r, __vsub4 replaced by their documented
host equivalents), multiply gguf-py's stored blocks with activations quantized here as the GPU's
quantize_q8 does, and land on gguf-py's dequantized weights times the float activations within
the error of the activation quantization (the thresholds of the GPU rows matvec_q8x2 / matvec_q8).

This is the same source text the GPU compiles, so a wrong offset, shift, nibble order or scale in
a format's integer dot product fails here, on any machine with g++, before a GPU runs it. The
GPU itself is checked by LT-019's conformance tests. Skipped, with the reason, where g++ is missing.
"""
from __future__ import annotations

import shutil
import subprocess

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from fixtures.gguf_corrupt import random_blocks
from fixtures.paths import REPO_ROOT
from stories.foundation._cuda_conformance import THRESHOLDS
from stories.llama._host_cuda import BIT_INTRINSICS
from worker.quant import FORMATS

pytestmark = [pytest.mark.story("LT-019"),
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed on this machine")]

INT8_FORMATS = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0, Q.MXFP4, Q.Q4_K, Q.Q5_K, Q.Q6_K]
PAD = 16                      # worker/backend/cuda_memory.py's WEIGHT_TAIL_PAD

# Host stand-ins for common.cuh and the CUDA built-ins vecdot.cuh uses (CUDA Math API semantics).
_HOST_PRELUDE = r"""
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
#define __device__
#define __forceinline__ inline
struct float4 { float x, y, z, w; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
struct { unsigned x = 0; } threadIdx;
""" + BIT_INTRINSICS + r"""
static inline float f16_bits_to_f32(u16 h) {
    u32 sign = (u32)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0) return __uint_as_float(sign);
        int e = -1;
        do { ++e; man <<= 1; } while (!(man & 0x400));
        return __uint_as_float(sign | ((u32)(112 - e) << 23) | ((man & 0x3ff) << 13));
    }
    return __uint_as_float(sign | ((exp + 112) << 23) | (man << 13));
}
static inline float warp_max(float v) { return v; }     // quantize_block_warp is not run here
static inline float warp_sum(float v) { return v; }
static inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
"""

_HOST_MAIN = r"""
// argv: format, K, rows N, tokens T, terms, bytes per row. stdin: N rows (+ pad), xq [2, T, K] int8,
// xds [T, K/32] x 4 float32. stdout: y [T, N] float32.
int main(int argc, char** argv) {
    if (argc != 7) return 2;
    const char* name = argv[1];
    const int K = std::atoi(argv[2]), N = std::atoi(argv[3]), T = std::atoi(argv[4]), terms = std::atoi(argv[5]);
    const long row_bytes = std::atol(argv[6]);
    std::vector<u8> w((size_t)row_bytes * N + 16);
    std::vector<i8> xq((size_t)2 * T * K);
    std::vector<float4> xds((size_t)T * (K / 32));
    if (std::fread(w.data(), 1, w.size(), stdin) != w.size()) return 3;
    if (std::fread(xq.data(), 1, xq.size(), stdin) != xq.size()) return 3;
    if (std::fread(xds.data(), sizeof(float4), xds.size(), stdin) != xds.size()) return 3;
    std::vector<float> y((size_t)T * N);
#define RUN(fmt)                                                                  \
    if (!std::strcmp(name, #fmt)) {                                               \
        for (int n = 0; n < N; ++n) {                                             \
            float acc[MMVQ_MAX_T] = {0, 0, 0, 0};                                 \
            for (int u = 0; u < K / MMVQ_UNIT_##fmt; ++u)                         \
                vdot_##fmt(w.data() + (size_t)n * row_bytes, u, xq.data(), xds.data(), K, T, (i64)T * K, terms, acc); \
            for (int t = 0; t < T; ++t) y[(size_t)t * N + n] = acc[t];            \
        }                                                                         \
        std::fwrite(y.data(), sizeof(float), y.size(), stdout);                   \
        return 0;                                                                 \
    }
    FOR_EACH_VECDOT_FORMAT(RUN)
    return 4;
}
"""


@pytest.fixture(scope="module")
def host_vdot(tmp_path_factory):
    """vecdot.cuh compiled for the host with a driver around FOR_EACH_VECDOT_FORMAT."""
    body = (REPO_ROOT / "worker" / "backend" / "kernels" / "vecdot.cuh").read_text()
    assert '#include "common.cuh"' in body
    body = body.replace('#include "common.cuh"', "").replace("#pragma once", "")
    work = tmp_path_factory.mktemp("vdot")
    src, exe = work / "vdot_host.cpp", work / "vdot_host"
    src.write_text(_HOST_PRELUDE + body + _HOST_MAIN)
    result = subprocess.run(["g++", "-std=c++17", "-O1", "-Wno-unknown-pragmas", "-o", str(exe), str(src)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return exe


def quantize_like_the_gpu(x: np.ndarray, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vecdot.cuh's quantize_block_warp in NumPy: (xq [2, T, K] int8, xds [T, K/32, 4], x carried)."""
    T, K = x.shape
    b = x.reshape(T, K // 32, 32).astype(np.float32)
    d0 = (np.abs(b).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    q0 = np.where(d0 > 0, np.rint(b / np.where(d0 > 0, d0, 1)), 0).astype(np.float32)
    r = (b.astype(np.float64) - q0.astype(np.float64) * d0).astype(np.float32)      # fmaf(-q0, d0, v)
    d1 = (np.abs(r).max(-1, keepdims=True) / np.float32(127)).astype(np.float32) if terms > 1 else 0 * d0
    q1 = np.where(d1 > 0, np.rint(r / np.where(d1 > 0, d1, 1)), 0).astype(np.float32)
    xq = np.stack([q0, q1]).astype(np.int8).reshape(2, T, K)
    xds = np.concatenate([d0, d1, b.sum(-1, keepdims=True, dtype=np.float32), 0 * d0], axis=-1)
    carried = (q0 * d0.astype(np.float64) + q1 * d1.astype(np.float64)).reshape(T, K)
    return xq, xds.astype(np.float32), carried


def _run(exe, qtype: Q, blocks: np.ndarray, N: int, x: np.ndarray, terms: int) -> np.ndarray:
    fmt = FORMATS[qtype]
    raw = np.ascontiguousarray(blocks).reshape(N, -1)
    T, K = x.shape
    xq, xds, _ = quantize_like_the_gpu(x, terms)
    stdin = raw.tobytes() + bytes(PAD) + xq.tobytes() + xds.tobytes()
    result = subprocess.run([str(exe), fmt.kernel, str(K), str(N), str(T), str(terms), str(raw.shape[1])],
                            input=stdin, capture_output=True, timeout=120)
    assert result.returncode == 0, (fmt.kernel, result.returncode, result.stderr[-2000:])
    return np.frombuffer(result.stdout, dtype=np.float32).reshape(T, N)


def _case(qtype: Q, seed: int, N: int, n_blocks: int, T: int, heavy_tail: bool):
    rng = np.random.default_rng(seed)
    block = FORMATS[qtype].block_size
    K = max(n_blocks, 1) * block
    blocks = random_blocks(qtype, N * K // block, rng)
    dense = np.asarray(gguf.quants.dequantize(blocks.copy(), qtype), np.float64).reshape(N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    if heavy_tail:                                  # SwiGLU-like: a few values dominate their blocks
        x = (x * rng.standard_normal((T, K)) ** 3).astype(np.float32)
    return blocks, dense, x


def _term_normalized(out: np.ndarray, ref: np.ndarray, x: np.ndarray, dense: np.ndarray) -> float:
    scale = np.abs(x.astype(np.float64)) @ np.abs(dense).T
    return float(np.sum((out - ref) ** 2) / np.sum(scale ** 2))


@pytest.mark.parametrize("qtype", INT8_FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("heavy_tail", [False, True], ids=["gaussian", "heavy-tailed"])
def test_two_term_products_match_the_float_product(host_vdot, qtype, heavy_tail):
    """The default decode path (two int8 terms): within matvec_q8x2's threshold of W x."""
    for seed, (N, n_blocks, T) in enumerate([(1, 1, 1), (7, 3, 2), (64, 12, 4), (33, 9, 1)]):
        blocks, dense, x = _case(qtype, 100 * int(qtype) + seed, N, n_blocks, T, heavy_tail)
        out = _run(host_vdot, qtype, blocks, N, x, terms=2).astype(np.float64)
        err = _term_normalized(out, x.astype(np.float64) @ dense.T, x, dense)
        assert err <= THRESHOLDS["matvec_q8x2"], f"{qtype.name} N={N} K={x.shape[1]} T={T}: {err:.3e}"


@pytest.mark.parametrize("qtype", INT8_FORMATS, ids=lambda q: q.name)
@pytest.mark.parametrize("terms", [1, 2])
def test_integer_products_equal_the_carried_activations_times_the_weights(host_vdot, qtype, terms):
    """Exactly what the int8 terms carry (d0 q0 + d1 q1), times gguf-py's weights: only float
    rounding apart. Offsets (Q4_0's 8, Q5_0's 16, Q4_1's and the K-quants' minimums) use the exact
    block sum, as the kernels do, so the reference takes them from x itself."""
    blocks, dense, x = _case(qtype, 7 * int(qtype) + terms, 48, 16 if FORMATS[qtype].block_size == 32 else 2, 3,
                             False)
    _, _, carried = quantize_like_the_gpu(x, terms)
    out = _run(host_vdot, qtype, blocks, 48, x, terms).astype(np.float64)
    if qtype in (Q.Q8_0, Q.MXFP4, Q.Q6_K):          # no offset: the product of the carried values alone
        ref = carried @ dense.T
    else:                                           # the offset part of W times x, the rest times carried
        offset = _offsets(qtype, blocks, x.shape[1], 48)
        ref = carried @ (dense - offset).T + x.astype(np.float64) @ offset.T
    err = _term_normalized(out, ref, x, dense)
    assert err <= 1e-12, f"{qtype.name} terms={terms}: {err:.3e}"


def _offsets(qtype: Q, blocks: np.ndarray, K: int, N: int) -> np.ndarray:
    """The per-value offset of each format's dequantization (the part the kernels multiply by the
    block's exact sum): -8 d (Q4_0), -16 d (Q5_0), m (Q4_1), -dmin m[s] (Q4_K, Q5_K)."""
    raw = np.ascontiguousarray(blocks).reshape(-1, FORMATS[qtype].type_size)

    def f16(col: int) -> np.ndarray:
        return raw[:, col:col + 2].copy().view(np.float16).astype(np.float64).reshape(-1)

    if qtype in (Q.Q4_0, Q.Q5_0):
        per_block = -(8.0 if qtype == Q.Q4_0 else 16.0) * f16(0)
        return np.repeat(per_block, 32).reshape(N, K)
    if qtype == Q.Q4_1:
        return np.repeat(f16(2), 32).reshape(N, K)
    dmin = f16(2)                                   # K-quants: eight six-bit minimums per super-block
    q = raw[:, 4:16].astype(np.int64)
    mins = np.empty((raw.shape[0], 8))
    for j in range(8):
        mins[:, j] = (q[:, j + 4] & 63) if j < 4 else ((q[:, j + 4] >> 4) | ((q[:, j] >> 6) << 4))
    return np.repeat(-(dmin[:, None] * mins), 32, axis=1).reshape(N, K)


def test_the_host_build_refuses_a_format_outside_the_list(host_vdot):
    result = subprocess.run([str(host_vdot), "q4_2", "32", "1", "1", "2", "18"], input=bytes(18 + PAD + 64 + 16),
                            capture_output=True)
    assert result.returncode == 4
