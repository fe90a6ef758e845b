// Elementwise ops: residual add, product, SwiGLU (plain and GPT-OSS clamped), GELU (tanh).
#include "common.cuh"
#include "vecdot.cuh"
#include "activation.cuh"

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

extern "C" __global__ void add(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, i64 n) {
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

extern "C" __global__ void mul(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, i64 n) {
    GRID_STRIDE(i, n) y[i] = a[i] * b[i];
}

// y[r, c] = a[r, c] * b[r]   (per-row scale, e.g. a token's routing weight)
extern "C" __global__ void mul_rows(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                    i64 n, int cols) {
    GRID_STRIDE(i, n) y[i] = a[i] * b[i / cols];
}

// y[r, c] = a[r, c] * b[c]   (per-column scale)
extern "C" __global__ void mul_cols(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                    i64 n, int cols) {
    GRID_STRIDE(i, n) y[i] = a[i] * b[i % cols];
}

// Activations are evaluated in double with the reference's formulas (worker/backend/numpy.py):
// 1 + tanh(z) cancels catastrophically for z << 0 in float32 (GELU at x = -6 would give 0 instead of
// -3e-8); double costs nothing here next to the memory traffic. sigmoid_d, swiglu_f, swiglu_clamped_f:
// activation.cuh.

// silu(g) * u
extern "C" __global__ void swiglu(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y, i64 n) {
    GRID_STRIDE(i, n) y[i] = swiglu_f(g[i], u[i]);
}

// GPT-OSS: g = min(g, limit); u = clip(u, -limit, limit); y = g * sigmoid(alpha g) * (u + 1)
extern "C" __global__ void swiglu_clamped(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y,
                                          i64 n, int has_limit, float limit, float alpha) {
    GRID_STRIDE(i, n) y[i] = swiglu_clamped_f(g[i], u[i], has_limit, limit, alpha);
}

// swiglu / swiglu_clamped (clamped != 0) of [T, F] values, F % 32 == 0, and the output as the int8
// activation blocks of the decode product that reads it (vecdot.cuh's layout, term stride T F).
// One warp per block of 32 values.
extern "C" __global__ void swiglu_q8(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y,
                                     i8* __restrict__ xq, float4* __restrict__ xds, i64 n, int terms, int clamped,
                                     int has_limit, float limit, float alpha) {
    const i64 blk = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (blk >= (n >> 5)) return;
    const i64 i = 32 * blk + (threadIdx.x & 31);
    const float v = clamped ? swiglu_clamped_f(g[i], u[i], has_limit, limit, alpha) : swiglu_f(g[i], u[i]);
    y[i] = v;
    quantize_block_warp(v, xq + i, n, xds + blk, terms);
}

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
extern "C" __global__ void gelu_tanh(const float* __restrict__ x, float* __restrict__ y, i64 n) {
    GRID_STRIDE(i, n) {
        const double v = x[i];
        const double inner = 0.7978845608028654 * (v + 0.044715 * v * v * v);
        y[i] = (float)(0.5 * v * (1.0 + tanh(inner)));
    }
}
