"""Building CUDA kernel sources for the host (g++), one host fiber per CUDA thread.

Shared by the host-fiber tests of the kernels (LT-016 attention, LT-019 fused decode ops, GT-016
prefill experts): each supplies its own prelude (the CUDA types and intrinsics its kernels use; the
common part is THREADED_PRELUDE) and entry points; this module holds the launcher those entry points
call, the extraction of a header's device function, and the build. BIT_INTRINSICS, part of the
threaded prelude, also serves the single-threaded build of the LT-019 int8 products.
"""
import ctypes
import re
import subprocess
from pathlib import Path

# CUDA's bit and integer intrinsics on the host (u8, u32, u64 and <cstring> come before): every host build of
# the kernels, threaded or not, takes them from here.
BIT_INTRINSICS = r"""
struct int4 { int x, y, z, w; };
template <typename T> static inline T __ldg(const T* p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }
static inline float __uint_as_float(u32 u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline u32 __float_as_uint(float f) { u32 u; std::memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
// byte n of the result: byte (s >> 4n) & 7 of the eight bytes {y, x} (x the low four)
static inline u32 __byte_perm(u32 x, u32 y, u32 s) {
    const u64 v = ((u64)y << 32) | x;
    u32 r = 0;
    for (int n = 0; n < 4; ++n) r |= (u32)((v >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n);
    return r;
}
static inline u32 __funnelshift_r(u32 lo, u32 hi, u32 shift) { return (u32)(((((u64)hi) << 32) | lo) >> (shift & 31)); }
// sum of the four signed byte products, plus c
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; ++i) c += (int)(signed char)(a >> 8 * i) * (int)(signed char)(b >> 8 * i);
    return c;
}
// per-byte a - b, wrapping
static inline u32 __vsub4(u32 a, u32 b) {
    u32 r = 0;
    for (int n = 0; n < 4; ++n) r |= (u32)((u8)((a >> 8 * n) - (b >> 8 * n))) << (8 * n);
    return r;
}
"""

# The CUDA names every host-fiber build needs: types, qualifiers, the thread and block indices, bit
# casts, and __syncthreads / __shfl_xor_sync as barriers over the slots of a warp (threads of a block
# are fibers, each on its own stack: launch below). A fiber runs until it waits at a barrier, so a kernel
# that reads what another thread has not yet written (a barrier missing) reads it early every time.
THREADED_PRELUDE = r"""
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <ucontext.h>
#include <vector>
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
#define __device__
#define __global__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
struct dim3 { unsigned x = 0, y = 0, z = 0; };
dim3 threadIdx, blockIdx, gridDim, blockDim;     // threadIdx: the running fiber's, set at every switch
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct uint2 { u32 x, y; };
struct uint4 { u32 x, y, z, w; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
static inline uint2 make_uint2(u32 a, u32 b) { return uint2{a, b}; }
static inline uint4 make_uint4(u32 a, u32 b, u32 c, u32 d) { return uint4{a, b, c, d}; }
""" + BIT_INTRINSICS + r"""
static inline float f16_bits_to_f32(u16 h) { _Float16 x; std::memcpy(&x, &h, 2); return (float)x; }
static inline u16 f32_to_f16_bits(float f) { _Float16 x = (_Float16)f; u16 h; std::memcpy(&h, &x, 2); return h; }
static inline float __ldcg(const float* p) { return *p; }
static inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
// The fibers of the running block (launch3): each waits at a barrier by handing control back to the scheduler.
static ucontext_t fiber_scheduler;
static ucontext_t* fiber_running;
static long long fiber_progress;                  // barriers passed and fibers finished: the deadlock check
static inline void fiber_yield() { swapcontext(fiber_running, &fiber_scheduler); }
struct FiberBarrier {
    unsigned n, count = 0, generation = 0;
    explicit FiberBarrier(unsigned n) : n(n) {}
    void arrive_and_wait() {
        const unsigned g = generation;
        if (++count == n) { count = 0; ++generation; ++fiber_progress; return; }
        while (generation == g) fiber_yield();
    }
};
static FiberBarrier* block_barrier;
static FiberBarrier* warp_barriers[32];
// Per-thread state of a prelude (kept across a thread's barriers) is reset here when a thread starts.
static void (*fiber_thread_start)() = nullptr;
static double shuffle_slots[32][32];
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline double shuffle_from(double v, int src) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32;
    warp_barriers[w]->arrive_and_wait();
    shuffle_slots[w][l] = v;
    warp_barriers[w]->arrive_and_wait();
    return shuffle_slots[w][src & 31];
}
static inline float __shfl_xor_sync(unsigned, float v, int o) { return (float)shuffle_from(v, (threadIdx.x % 32) ^ o); }
static inline float __shfl_sync(unsigned, float v, int src) { return (float)shuffle_from(v, src); }
using std::max; using std::min;
"""

# launch(gx, gy, threads, seed, body) and launch3(gx, gy, gz, ...) for a 3-D grid: every block of the grid in a
# seeded shuffled order (a kernel must not depend on block order); a block's threads are fibers, each run until it
# waits at a barrier (the prelude's __syncthreads and shuffles use block_barrier and warp_barriers), one warp at a
# time. A block whose fibers all wait and none can pass (a barrier some threads never reach) aborts with
# a message, where threads would hang.
THREADED_LAUNCH = r"""
static const std::function<void()>* fiber_body;
static std::vector<ucontext_t> fiber_contexts;
static std::vector<char> fiber_done;
static unsigned fiber_index;
static void fiber_entry() {
    if (fiber_thread_start) fiber_thread_start();
    (*fiber_body)();
    fiber_done[fiber_index] = 1;
    ++fiber_progress;
}                                                 // returns to uc_link: the scheduler
static void launch3(unsigned gx, unsigned gy, unsigned gz, unsigned threads, unsigned seed,
                    const std::function<void()>& body) {
    constexpr size_t STACK = 256 << 10;
    static std::vector<char*> stacks;            // untouched pages cost nothing: kept for the next launch
    while (stacks.size() < threads) stacks.push_back(static_cast<char*>(std::malloc(STACK)));
    gridDim = dim3{gx, gy, gz};
    blockDim = dim3{threads, 1, 1};
    std::vector<dim3> blocks;
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) blocks.push_back(dim3{x, y, z});
    std::shuffle(blocks.begin(), blocks.end(), std::mt19937(seed));
    fiber_body = &body;
    for (const dim3& b : blocks) {
        blockIdx = b;
        FiberBarrier bb(threads);
        block_barrier = &bb;
        std::vector<FiberBarrier> wb(threads / 32, FiberBarrier(32));
        for (unsigned w = 0; w < threads / 32; ++w) warp_barriers[w] = &wb[w];
        fiber_contexts.assign(threads, ucontext_t{});
        fiber_done.assign(threads, 0);
        for (unsigned i = 0; i < threads; ++i) {
            ucontext_t& c = fiber_contexts[i];
            getcontext(&c);
            c.uc_stack.ss_sp = stacks[i];
            c.uc_stack.ss_size = STACK;
            c.uc_link = &fiber_scheduler;
            makecontext(&c, fiber_entry, 0);
        }
        // One warp at a time, in an order shuffled per block, as far as it gets before it waits for another warp:
        // a warp that writes what another still has to read (a __syncthreads missing) does so before the read.
        std::vector<unsigned> warps((threads + 31) / 32);
        for (unsigned w = 0; w < warps.size(); ++w) warps[w] = w;
        std::shuffle(warps.begin(), warps.end(), std::mt19937(seed ^ (b.x * 7919u + b.y * 104729u + b.z)));
        for (unsigned live = threads; live;) {
            const long long before = fiber_progress;
            for (unsigned w : warps) {
                for (long long step = -1; step != fiber_progress;) {   // until the warp makes no progress
                    step = fiber_progress;
                    for (unsigned i = 32 * w; i < std::min(threads, 32 * w + 32); ++i) {
                        if (fiber_done[i]) continue;
                        fiber_index = i;
                        threadIdx = dim3{i, 0, 0};
                        fiber_running = &fiber_contexts[i];
                        swapcontext(&fiber_scheduler, fiber_running);
                        live -= fiber_done[i];
                    }
                }
            }
            if (live && fiber_progress == before) {
                std::fprintf(stderr, "host launch: block (%u, %u, %u): %u threads wait at barriers none can pass\n",
                             b.x, b.y, b.z, live);
                std::abort();
            }
        }
    }
}
static void launch(unsigned gx, unsigned gy, unsigned threads, unsigned seed, const std::function<void()>& body) {
    launch3(gx, gy, 1, threads, seed, body);
}
"""


# The int8 tensor-core product (mma_s8.cuh) on the host fibers of THREADED_PRELUDE; host_mma_s8_count counts
# the calls, host_set_mma_s8_layout picks a wrong layout for negative controls.
HOST_MMA_S8 = r"""
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 on the host: the warp's fragments gathered as the PTX ISA lays
// them out (g = lane / 4, q = lane % 4; four int8 a register, the lowest k in the lowest byte):
//   A[row][k] is byte k % 4 of register (row >= 8) + 2 (k >= 16) of lane (row % 8) * 4 + (k % 16) / 4,
//   B[k][col] is byte k % 4 of register (k >= 16) of lane col * 4 + (k % 16) / 4,
//   d[i] of lane (g, q) is D[g + 8 (i >= 2)][2q + (i & 1)].
// host_set_mma_s8_layout(1) swaps A's registers 1 and 2, (2) reads B's lanes k-major: wrong layouts, which the
// tests use as negative controls.
static u32 mms_a[32][32][4], mms_b[32][32][2];
static std::atomic<long long> mma_s8_count{0};
static int mma_s8_layout = 0;
extern "C" long long host_mma_s8_count() { return mma_s8_count.exchange(0); }
extern "C" void host_set_mma_s8_layout(int layout) { mma_s8_layout = layout; }
static inline int s8_byte(u32 reg, int byte) { return (int)(signed char)(u8)(reg >> (8 * byte)); }
static inline void mma_s8_16x8x32(int* d, const u32* a, const u32* b) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, q = l % 4;
    warp_barriers[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) mms_a[w][l][i] = a[i];
    for (int i = 0; i < 2; ++i) mms_b[w][l][i] = b[i];
    if (l == 0) ++mma_s8_count;
    warp_barriers[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * q + (i & 1);
        long long s = 0;
        for (int k = 0; k < 32; ++k) {
            const int ra = mma_s8_layout == 1 ? 2 * (row >= 8) + (k >= 16) : (row >= 8) + 2 * (k >= 16);
            const int lb = mma_s8_layout == 2 ? ((k % 16) / 4) * 8 + col : col * 4 + (k % 16) / 4;
            s += (long long)s8_byte(mms_a[w][(row % 8) * 4 + (k % 16) / 4][ra], k % 4)
                 * s8_byte(mms_b[w][lb][k >= 16], k % 4);
        }
        d[i] = (int)((long long)d[i] + s);
    }
    warp_barriers[w]->arrive_and_wait();
}

"""


# The BF16 tensor-core product (mma_bf16.cuh) on the host fibers of THREADED_PRELUDE; host_mma_bf16_count counts
# the calls.
HOST_MMA_BF16 = r"""
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 on the host: two bfloat16 values a register, the lower
// k in the low half (mma_bf16.cuh); each product exact, the sixteen of an output summed in double, added once.
static u32 mmb_a[32][32][4], mmb_b[32][32][2];
static std::atomic<long long> mma_bf16_count{0};
extern "C" long long host_mma_bf16_count() { return mma_bf16_count.exchange(0); }
static inline float bf16_half(u32 reg, int high) { return __uint_as_float(high ? reg & 0xffff0000u : reg << 16); }
static inline void mma_bf16_16x8x16(float* d, const u32* a, const u32* b) {
    const int w = threadIdx.x / 32, l = threadIdx.x % 32, g = l / 4, q = l % 4;
    warp_barriers[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) mmb_a[w][l][i] = a[i];
    for (int i = 0; i < 2; ++i) mmb_b[w][l][i] = b[i];
    if (l == 0) ++mma_bf16_count;
    warp_barriers[w]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >> 1), col = 2 * q + (i & 1);
        double s = 0.0;
        for (int k = 0; k < 16; ++k) {
            const float av = bf16_half(mmb_a[w][(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
            const float bv = bf16_half(mmb_b[w][col * 4 + (k % 8) / 2][k >= 8], k % 2);
            s += (double)(av * bv);
        }
        d[i] = (float)((double)d[i] + s);
    }
    warp_barriers[w]->arrive_and_wait();
}

// fma.rn.bf16x2 with -0 (mma_bf16.cuh's bf16x2_mul) on the host: each half's product in float32 (exact: two
// bfloat16 values' product fits), rounded to nearest-even at bfloat16.
static inline u32 bf16x2_mul(u32 a, u32 b) {
    u32 d = 0;
    for (int h = 0; h < 2; ++h) {
        u32 u = __float_as_uint(bf16_half(a, h) * bf16_half(b, h));
        if ((u & 0x7f800000u) != 0x7f800000u) u += 0x7fffu + ((u >> 16) & 1u);
        d |= (u >> 16) << (16 * h);
    }
    return d;
}
"""


_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)')


def kernel_body(path: Path) -> str:
    """A kernel file's text without its #include lines and #pragma once (the host build lists what it includes)."""
    return re.sub(r'^\s*#include "[^"]+"\s*$', "", path.read_text(), flags=re.M).replace("#pragma once", "")


def host_entries(text: str, grid_dims: int = 2) -> str:
    """extern "C" host_<kernel>(gx, gy[, gz], threads, seed, <the kernel's parameters>) for every kernel of `text`
    (signatures from the preprocessed text, as FT-007 reads them), each running the kernel through THREADED_LAUNCH's
    launch (grid_dims 2) or launch3 (3)."""
    pre = subprocess.run(["cpp", "-P", "-x", "c++", "-"], input=text, capture_output=True, text=True, timeout=120)
    assert pre.returncode == 0, pre.stderr
    grid, call = ("unsigned gx, unsigned gy, unsigned gz", "launch3(gx, gy, gz") if grid_dims == 3 else \
        ("unsigned gx, unsigned gy", "launch(gx, gy")
    entries = []
    for m in _KERNEL.finditer(pre.stdout):
        params = " ".join(m.group(2).split())
        names = [re.findall(r"\w+", p)[-1] for p in params.split(",")]
        entries.append(f'extern "C" void host_{m.group(1)}({grid}, unsigned threads, unsigned seed, {params}) '
                       f'{{ {call}, threads, seed, [=] {{ {m.group(1)}({", ".join(names)}); }}); }}\n')
    assert entries, "no kernel in the text"
    return "".join(entries)


def device_function(path: Path, name: str) -> str:
    """The text of device function `name` of a header (from its signature to its closing brace)."""
    text = path.read_text()
    m = re.search(rf"^__device__ __forceinline__ \w+ {name}\(.*?^}}\n", text, flags=re.S | re.M)
    assert m, f"{path.name} no longer defines {name}"
    return m.group(0)


def build_host_library(text: str, work: Path, stem: str, timeout: int) -> ctypes.CDLL:
    """Compile `text` (C++20) into a shared library in `work` and load it."""
    src, lib = work / f"{stem}.cpp", work / f"{stem}.so"
    src.write_text(text)
    result = subprocess.run(["g++", "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-Wno-unknown-pragmas",
                             "-o", str(lib), str(src)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return ctypes.CDLL(str(lib))
