// Row normalisations over the last axis: one block per row. The reductions run in double
// (cheap next to reading the row) so that a large common offset or a wide row costs no accuracy.
#include "common.cuh"
#include "vecdot.cuh"

// y = x / sqrt(mean(x^2) + eps) * w
extern "C" __global__ void rmsnorm(const float* __restrict__ x, const float* __restrict__ w,
                                   float* __restrict__ y, int D, float eps) {
    __shared__ double scratch[32];
    const float* xr = x + (i64)blockIdx.x * D;
    float* yr = y + (i64)blockIdx.x * D;
    double ss = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum_d(ss, scratch);
    const double inv = 1.0 / sqrt(ss / D + (double)eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = (float)(xr[i] * inv * w[i]);
}

// rmsnorm, and its output as the int8 activation blocks of the decode products (vecdot.cuh's layout,
// term stride T D): the product that reads y needs no quantize_q8 launch. D % 32 == 0.
// A decode row is short (hundreds to a few thousand values) and alone on the GPU, so latency is what
// counts: each warp owns 32-value blocks c = warp + j * warps (j < RMSNORM_Q8_BLOCKS_PER_WARP) and
// keeps them in registers with their weights (both loaded at the start, so that the weights' memory
// latency passes during the reduction), the row is read once, one block reduction (in double, as
// rmsnorm, with a single barrier) gives the scale, and each warp quantizes its own blocks.
// D <= 32 * 32 * RMSNORM_Q8_BLOCKS_PER_WARP with 32 * min(32, D / 32) threads; wider rows: rmsnorm_q8_wide.
// terms = 0 (xq, xds unused): the norm alone, for rows of any count (a prefill's: one read of the row, where
// rmsnorm reads it twice; 8.6 us for GPT-OSS-20B's 128 x 2880 on the H200).
#define RMSNORM_Q8_BLOCKS_PER_WARP 8
extern "C" __global__ void rmsnorm_q8(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                      i8* __restrict__ xq, float4* __restrict__ xds, int D, float eps, int T,
                                      int terms) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5, blocks = D >> 5;
    const float* xr = x + (i64)blockIdx.x * D;
    float v[RMSNORM_Q8_BLOCKS_PER_WARP], wv[RMSNORM_Q8_BLOCKS_PER_WARP];
#pragma unroll
    for (int j = 0; j < RMSNORM_Q8_BLOCKS_PER_WARP; ++j) {
        const int c = warp + j * warps;
        v[j] = c < blocks ? xr[32 * c + lane] : 0.0f;
        wv[j] = c < blocks ? w[32 * c + lane] : 0.0f;
    }
    double ss = 0.0;
#pragma unroll
    for (int j = 0; j < RMSNORM_Q8_BLOCKS_PER_WARP; ++j) ss += (double)v[j] * v[j];
    // block_sum_d's numbers without its first barrier (which guards a reused scratch; this one is used once)
    ss = warp_sum_d(ss);
    if (lane == 0) scratch[warp] = ss;
    __syncthreads();
    ss = warp_sum_d(lane < warps ? scratch[lane] : 0.0);
    const double inv = 1.0 / sqrt(ss / D + (double)eps);
#pragma unroll
    for (int j = 0; j < RMSNORM_Q8_BLOCKS_PER_WARP; ++j) {
        const int c = warp + j * warps;           // the same for the whole warp: its shuffles stay full
        if (c < blocks) {
            const int i = 32 * c + lane;
            const float out = (float)(v[j] * inv * wv[j]);
            y[(i64)blockIdx.x * D + i] = out;
            if (terms)                            // terms = 0: the norm alone (norm.py's rmsnorm, any row count)
                quantize_block_warp(out, xq + (i64)blockIdx.x * D + i, (i64)T * D, xds + (i64)blockIdx.x * blocks + c,
                                    terms);
        }
    }
}

// rmsnorm_q8 for rows wider than rmsnorm_q8 keeps in registers: the row is read twice.
extern "C" __global__ void rmsnorm_q8_wide(const float* __restrict__ x, const float* __restrict__ w,
                                           float* __restrict__ y, i8* __restrict__ xq, float4* __restrict__ xds,
                                           int D, float eps, int T, int terms) {
    __shared__ double scratch[32];
    const float* xr = x + (i64)blockIdx.x * D;
    float* yr = y + (i64)blockIdx.x * D;
    double ss = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) ss += (double)xr[i] * xr[i];
    ss = block_sum_d(ss, scratch);
    const double inv = 1.0 / sqrt(ss / D + (double)eps);
    const int lane = threadIdx.x & 31;
    for (int c = threadIdx.x >> 5; c < (D >> 5); c += blockDim.x >> 5) {
        const int i = 32 * c + lane;
        const float v = (float)(xr[i] * inv * w[i]);
        yr[i] = v;
        quantize_block_warp(v, xq + (i64)blockIdx.x * D + i, (i64)T * D, xds + (i64)blockIdx.x * (D >> 5) + c, terms);
    }
}

// y = (x - mean) / sqrt(var + eps) * w + b   (two passes: the variance of centred values)
extern "C" __global__ void layernorm(const float* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ b, float* __restrict__ y, int D, float eps) {
    __shared__ double scratch[32];
    const float* xr = x + (i64)blockIdx.x * D;
    float* yr = y + (i64)blockIdx.x * D;
    double s = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += xr[i];
    const double mean = block_sum_d(s, scratch) / D;
    double v = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const double c = xr[i] - mean;
        v += c * c;
    }
    const double inv = 1.0 / sqrt(block_sum_d(v, scratch) / D + (double)eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = (float)((xr[i] - mean) * inv * w[i] + b[i]);
}
