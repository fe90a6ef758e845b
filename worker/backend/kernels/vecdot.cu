// Decode products on int8 activations (llama.cpp's MMVQ idea, our code): quantize_q8 turns the
// activations into 32-value int8 blocks once per product input, mmvq_<fmt> multiplies them with a
// weight kept in its stored format using __dp4a (vecdot.cuh). Launch geometry: vecdot.py.
#include "vecdot.cuh"
#include "activation.cuh"

// x [T, K] float32 -> xq [terms, T, K] int8 (term stride T K), xds [T, K/32] (d0, d1, s, 0):
// vecdot.cuh's quantize_block_warp, one warp per block of 32.
extern "C" __global__ void quantize_q8(const float* __restrict__ x, i8* __restrict__ xq, float4* __restrict__ xds,
                                       int K, int T, int terms) {
    const i64 blk = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (blk >= (i64)T * (K >> 5)) return;
    const i64 i = 32 * blk + (threadIdx.x & 31);   // == t * K + 32 b + lane
    quantize_block_warp(x[i], xq + i, (i64)T * K, xds + blk, terms);
}

// y[slot][t, n] = sum_k x[t, k] W_e[n, k] (+ bias_e[n]) for t < T <= MMVQ_MAX_T, one warp per row.
// (Splitting a long row over the 4 warps of a block, as llama.cpp's mmvq does, measured slower here:
// benchmarks/bench_matvec.py on the H200, e.g. MXFP4 2880 x 2880 7.7 -> 9.2 us.)
// Slots (blockIdx.y) run several weights of a stacked [E, N, K] tensor in one launch: slot j uses
// expert e = expert_ids ? expert_ids[j] : j, read on the device (a CUDA graph can replay it); its
// activations are rows [j T, j T + T) of the quantized input when x_per_slot, else rows [0, T). bias: [E, N] (expert_stride N) or [N].
// residual [slots T, N] (or NULL): y = residual + (W x + b), the order of add(residual, product).
#define DEFINE_MMVQ(fmt)                                                                          \
extern "C" __global__ void mmvq_##fmt(const u8* __restrict__ W, i64 row_bytes, i64 expert_bytes,  \
                                      const int* __restrict__ expert_ids, const i8* __restrict__ xq, \
                                      const float4* __restrict__ xds, i64 term_stride, int x_per_slot, \
                                      const float* __restrict__ bias, int bias_per_expert,        \
                                      const float* __restrict__ residual, float* __restrict__ y,  \
                                      int N, int K, int T, int terms) {                           \
    const int lane = threadIdx.x & 31;                                                            \
    const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);                            \
    if (n >= N) return;                                                                           \
    const int slot = blockIdx.y;                                                                  \
    const int e = expert_ids ? expert_ids[slot] : slot;                                           \
    const u8* row = W + (i64)e * expert_bytes + (i64)n * row_bytes;                               \
    if (x_per_slot) {                                                                             \
        xq += (i64)slot * T * K;                                                                  \
        xds += (i64)slot * T * (K >> 5);                                                          \
    }                                                                                             \
    float acc[MMVQ_MAX_T];                                                                        \
    _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) acc[t] = 0.0f;                         \
    const int units = K / MMVQ_UNIT_##fmt;                                                        \
    for (int u = lane; u < units; u += 32) vdot_##fmt(row, u, xq, xds, K, T, term_stride, terms, acc); \
    const float b = bias ? bias[(bias_per_expert ? (i64)e * N : 0) + n] : 0.0f;                   \
    _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) {                                      \
        if (t < T) {                                                                              \
            const float s = warp_sum(acc[t]);                                                     \
            const i64 at = ((i64)slot * T + t) * N + n;                                           \
            if (lane == 0) y[at] = residual ? residual[at] + (s + b) : s + b;                     \
        }                                                                                         \
    }                                                                                             \
}

FOR_EACH_VECDOT_FORMAT(DEFINE_MMVQ)

// Up to MMVQ_MAX_SEGMENTS products of one quantized input in one launch (q, k, v; gate, up): segment
// j has its own weight (format code fmt_j, MMVQ_FMT_<fmt>), N_j rows, bias (or NULL) and output
// y_j [T, N_j]; it takes blocks [end_{j-1}, end_j) of the grid, one warp per row as in mmvq_<fmt>.
// The format switch is uniform over a block, so it costs no divergence.
#define MMVQ_SEGMENT_CASE(fmt)                                                                    \
    case MMVQ_FMT_##fmt:                                                                          \
        for (int u = lane; u < K / MMVQ_UNIT_##fmt; u += 32) vdot_##fmt(row, u, xq, xds, K, T, ts, terms, acc); \
        break;

extern "C" __global__ void mmvq_segments(const i8* __restrict__ xq, const float4* __restrict__ xds, i64 ts,
                                         int K, int T, int terms,
                                         const u8* W0, i64 row_bytes0, const float* bias0, float* y0, int N0,
                                         int fmt0, int end0,
                                         const u8* W1, i64 row_bytes1, const float* bias1, float* y1, int N1,
                                         int fmt1, int end1,
                                         const u8* W2, i64 row_bytes2, const float* bias2, float* y2, int N2,
                                         int fmt2) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int blk = blockIdx.x;
    const u8* W = W0; i64 row_bytes = row_bytes0; const float* bias = bias0; float* y = y0;
    int N = N0, fmt = fmt0, first = 0;
    if (blk >= end1) {
        W = W2; row_bytes = row_bytes2; bias = bias2; y = y2; N = N2; fmt = fmt2; first = end1;
    } else if (blk >= end0) {
        W = W1; row_bytes = row_bytes1; bias = bias1; y = y1; N = N1; fmt = fmt1; first = end0;
    }
    const int n = (blk - first) * warps + warp;
    if (n >= N) return;
    const u8* row = W + (i64)n * row_bytes;
    float acc[MMVQ_MAX_T];
#pragma unroll
    for (int t = 0; t < MMVQ_MAX_T; ++t) acc[t] = 0.0f;
    switch (fmt) { FOR_EACH_VECDOT_FORMAT(MMVQ_SEGMENT_CASE) }
    const float b = bias ? bias[n] : 0.0f;
#pragma unroll
    for (int t = 0; t < MMVQ_MAX_T; ++t) {
        if (t < T) {
            const float s = warp_sum(acc[t]);
            if (lane == 0) y[(i64)t * N + n] = s + b;
        }
    }
}

// The gate and up products of one quantized input, SwiGLU, and the result's int8 blocks for the down
// product, in one launch (F % 32 == 0): block b computes rows [32 b, 32 b + 32) of gate and of up
// (64 rows, warp w taking rows w, w + warps, ... of them, one warp a row as in mmvq_<fmt>), then warp
// t < T applies silu(gate) * up (swiglu_f: elementwise.cu's swiglu) to token t's 32 values, writes
// them to y [T, F] and quantizes them as one block into yq/yds (term stride T F); yq/yds must not be
// xq/xds. Each product is mmvq_<fmt>'s sum in mmvq's order: y equals swiglu(mmvq(gate), mmvq(up)).
#define DEFINE_MMVQ_SWIGLU(fmt)                                                                   \
extern "C" __global__ void mmvq_swiglu_##fmt(const u8* __restrict__ Wg, const u8* __restrict__ Wu, i64 row_bytes, \
                                             const i8* __restrict__ xq, const float4* __restrict__ xds, \
                                             float* __restrict__ y, i8* __restrict__ yq,           \
                                             float4* __restrict__ yds, int F, int K, int T, int terms) { \
    __shared__ float out[2][MMVQ_MAX_T][32];                     /* [gate/up][t][row] */          \
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;          \
    const i64 ts = (i64)T * K;                                                                    \
    for (int r = warp; r < 64; r += warps) {                                                      \
        const u8* row = (r < 32 ? Wg : Wu) + (32 * (i64)blockIdx.x + (r & 31)) * row_bytes;       \
        float acc[MMVQ_MAX_T];                                                                    \
        _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) acc[t] = 0.0f;                     \
        for (int u = lane; u < K / MMVQ_UNIT_##fmt; u += 32) vdot_##fmt(row, u, xq, xds, K, T, ts, terms, acc); \
        _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) {                                  \
            if (t < T) {                                                                          \
                const float s = warp_sum(acc[t]);                                                 \
                if (lane == 0) out[r >> 5][t][r & 31] = s;                                        \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    __syncthreads();                                                                              \
    if (warp < T) {                                                                               \
        const float v = swiglu_f(out[0][warp][lane], out[1][warp][lane]);                         \
        const i64 i = (i64)warp * F + 32 * (i64)blockIdx.x + lane;                                \
        y[i] = v;                                                                                 \
        quantize_block_warp(v, yq + i, (i64)T * F, yds + (i64)warp * (F >> 5) + blockIdx.x, terms); \
    }                                                                                             \
}

FOR_EACH_VECDOT_FORMAT(DEFINE_MMVQ_SWIGLU)
