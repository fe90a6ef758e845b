// Elementwise ops: residual add, product, SwiGLU (plain and GPT-OSS clamped), GELU (tanh).
#include "common.cuh"

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

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// silu(g) * u
extern "C" __global__ void swiglu(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y, i64 n) {
    GRID_STRIDE(i, n) {
        const float gi = g[i];
        y[i] = gi * sigmoid(gi) * u[i];
    }
}

// GPT-OSS: g = min(g, limit); u = clip(u, -limit, limit); y = g * sigmoid(alpha g) * (u + 1)
extern "C" __global__ void swiglu_clamped(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y,
                                          i64 n, int has_limit, float limit, float alpha) {
    GRID_STRIDE(i, n) {
        float gi = g[i], ui = u[i];
        if (has_limit) {
            gi = fminf(gi, limit);
            ui = fminf(fmaxf(ui, -limit), limit);
        }
        y[i] = gi * sigmoid(alpha * gi) * (ui + 1.0f);
    }
}

// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
extern "C" __global__ void gelu_tanh(const float* __restrict__ x, float* __restrict__ y, i64 n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        const float inner = 0.7978845608028654f * fmaf(0.044715f * v, v * v, v);
        y[i] = 0.5f * v * (1.0f + tanhf(inner));
    }
}
