// Row normalisations over the last axis: one block per row. The reductions run in double
// (cheap next to reading the row) so that a large common offset or a wide row costs no accuracy.
#include "common.cuh"

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
