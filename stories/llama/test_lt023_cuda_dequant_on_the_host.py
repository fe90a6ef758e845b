"""LT-023 weight loading, quant formats, CUDA side without a GPU: the dq8_<fmt> device functions of
worker/backend/kernels/quant.cuh, compiled for the host by the system C++ compiler (intrinsics
replaced by their IEEE host equivalents, float contraction off, as the kernels request with
__fmul_rn/__fadd_rn), dequantize every format of the registry bit-exactly as gguf-py does.

This is the same source text the GPU compiles, instantiated through its own FOR_EACH_FORMAT list,
so a wrong offset, shift or table entry in a kernel fails here, on any machine with g++, before a
GPU ever runs it. Skipped, with the reason, where g++ is missing. The GPU itself is checked by
the conformance tests (LT-019, FT-015, FT-016).
"""
from __future__ import annotations

import shutil
import subprocess
import warnings

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from fixtures.gguf_corrupt import ALL_TYPES, random_blocks
from fixtures.paths import REPO_ROOT
from fixtures.quant_blocks import differ, hard_blocks
from worker.quant import FORMATS

pytestmark = [pytest.mark.story("LT-023"),
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed on this machine")]

# Host stand-ins for the CUDA built-ins quant.cuh uses (common.cuh is replaced by these).
_HOST_PRELUDE = r"""
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
static inline float __uint_as_float(u32 u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline int __popc(u32 x) { return __builtin_popcount(x); }
// IEEE half -> float by bit manipulation (exact; NaN payloads kept, as NumPy does).
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
static inline float load_f16(const u8* p) { return f16_bits_to_f32((u16)(p[0] | (p[1] << 8))); }
static inline float bf16_bits_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }
"""

_HOST_MAIN = r"""
// argv: format, values per row K, rows, bytes per row; stored rows on stdin, float32 rows on stdout.
int main(int argc, char** argv) {
    if (argc != 5) return 2;
    const char* name = argv[1];
    const int K = std::atoi(argv[2]), rows = std::atoi(argv[3]);
    const long row_bytes = std::atol(argv[4]);
    std::vector<u8> raw((size_t)row_bytes * rows);
    if (std::fread(raw.data(), 1, raw.size(), stdin) != raw.size()) return 3;
    std::vector<float> out((size_t)K * rows);
#define RUN(fmt)                                                                  \
    if (!std::strcmp(name, #fmt)) {                                               \
        for (int r = 0; r < rows; ++r) {                                          \
            const u8* row = raw.data() + (size_t)r * row_bytes;                   \
            float* o = out.data() + (size_t)r * K;                                \
            for (int c = 0; c < K / 8; ++c) dq8_##fmt(row, c, o + 8 * c);         \
            for (int k = K / 8 * 8; k < K; ++k) o[k] = dq1_##fmt(row, k);         \
        }                                                                         \
        std::fwrite(out.data(), sizeof(float), out.size(), stdout);               \
        return 0;                                                                 \
    }
    FOR_EACH_FORMAT(RUN)
    return 4;
}
"""


@pytest.fixture(scope="module")
def host_dq8(tmp_path_factory):
    """The path of quant.cuh compiled for the host with a small driver around FOR_EACH_FORMAT."""
    kernels = REPO_ROOT / "worker" / "backend" / "kernels"
    body = (kernels / "quant.cuh").read_text()
    assert '#include "common.cuh"' in body
    body = body.replace('#include "common.cuh"', "").replace("#pragma once", "")
    for line in body.splitlines():          # any other local header is inlined as the NVRTC path does
        if line.startswith('#include "'):
            name = line.split('"')[1]
            body = body.replace(line, (kernels / name).read_text().replace("#pragma once", ""))
    work = tmp_path_factory.mktemp("dq8")
    src, exe = work / "dq8_host.cpp", work / "dq8_host"
    src.write_text(_HOST_PRELUDE + body + _HOST_MAIN)
    result = subprocess.run(["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-Wno-unknown-pragmas",
                             "-o", str(exe), str(src)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return exe


def _run(exe, qtype: Q, blocks: np.ndarray, rows: int) -> np.ndarray:
    fmt = FORMATS[qtype]
    raw = np.ascontiguousarray(blocks).reshape(rows, -1)
    K = raw.shape[1] // fmt.type_size * fmt.block_size
    result = subprocess.run([str(exe), fmt.kernel, str(K), str(rows), str(raw.shape[1])],
                            input=raw.tobytes(), capture_output=True, timeout=120)
    assert result.returncode == 0, (fmt.kernel, result.returncode, result.stderr[-2000:])
    return np.frombuffer(result.stdout, dtype=np.float32).reshape(rows, K)


def _blocks_per_row(qtype: Q) -> int:
    return 37 if FORMATS[qtype].block_size == 1 else 3    # floats: K = 37 exercises the dq1 tail


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=[q.name for q in ALL_TYPES])
@pytest.mark.parametrize("sane", [True, False], ids=["finite-scales", "any-bytes"])
def test_every_cuda_dequantizer_matches_gguf_py_bit_for_bit(host_dq8, qtype, sane):
    rows = 64 if sane else 400
    blocks = random_blocks(qtype, rows * _blocks_per_row(qtype), np.random.default_rng(int(qtype) + 7 * sane),
                           sane=sane)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        theirs = np.asarray(gguf.quants.dequantize(blocks.copy(), qtype)).reshape(rows, -1)
        ours = _run(host_dq8, qtype, blocks, rows)
    assert ours.shape == theirs.shape
    diff = differ(ours, theirs)
    assert diff == 0, f"{qtype.name}: {diff} of {ours.size} values differ from gguf-py"


def test_the_host_build_refuses_a_format_outside_the_list(host_dq8):
    result = subprocess.run([str(host_dq8), "q4_2", "32", "1", "18"], input=bytes(18), capture_output=True)
    assert result.returncode == 4


@pytest.mark.parametrize("qtype", ALL_TYPES, ids=[q.name for q in ALL_TYPES])
def test_hand_picked_hard_blocks_match_gguf_py(host_dq8, qtype):
    blocks = hard_blocks(qtype, np.random.default_rng(int(qtype)))
    rows = blocks.shape[0] if FORMATS[qtype].block_size > 1 else 1
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        theirs = np.asarray(gguf.quants.dequantize(blocks.copy(), qtype)).reshape(rows, -1)
    assert differ(_run(host_dq8, qtype, blocks, rows), theirs) == 0, qtype.name
