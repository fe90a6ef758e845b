// Products with a weight kept in its stored format (dequantized on the fly), and row
// dequantization (embedding lookup; the prefill path's workspace tiles for cuBLAS).
#include "quant.cuh"

#define MATVEC_MAX_T 4   // tokens one launch of the fused kernel handles (decode: 1)

// y[t, n] = sum_k x[t, k] * W[n, k] (+ bias[n]) for t < T <= MATVEC_MAX_T.
// One warp per output row; each lane takes 8-value chunks c = lane, lane + 32, ...
#define DEFINE_MATVEC(fmt)                                                                        \
extern "C" __global__ void matvec_##fmt(const u8* __restrict__ W, i64 row_bytes,                  \
                                        const float* __restrict__ x, const float* __restrict__ bias, \
                                        float* __restrict__ y, int N, int K, int T) {             \
    const int lane = threadIdx.x & 31;                                                            \
    const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);                            \
    if (n >= N) return;                                                                           \
    const u8* row = W + (i64)n * row_bytes;                                                       \
    float acc[MATVEC_MAX_T];                                                                      \
    _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t) acc[t] = 0.0f;                       \
    const int n_chunks = K >> 3;                                                                  \
    for (int c = lane; c < n_chunks; c += 32) {                                                   \
        float w[8];                                                                               \
        dq8_##fmt(row, c, w);                                                                     \
        _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t) {                                \
            if (t < T) {                                                                          \
                const float* xp = x + (i64)t * K + 8 * c;                                         \
                _Pragma("unroll") for (int i = 0; i < 8; ++i) acc[t] = fmaf(w[i], xp[i], acc[t]); \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    for (int k = 8 * n_chunks + lane; k < K; k += 32) {  /* float formats: K % 8 tail */          \
        const float wk = dq1_##fmt(row, k);                                                       \
        _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t)                                  \
            if (t < T) acc[t] = fmaf(wk, x[(i64)t * K + k], acc[t]);                              \
    }                                                                                             \
    _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t) {                                    \
        if (t < T) {                                                                              \
            const float s = warp_sum(acc[t]);                                                     \
            if (lane == 0) y[(i64)t * N + n] = s + (bias ? bias[n] : 0.0f);                       \
        }                                                                                         \
    }                                                                                             \
}

// out[i, k] = W[row_i, k] for i < n_rows, row_i = ids ? ids[i] : first_row + i.
// One thread per 8-value chunk (float formats: per value in the K % 8 tail).
#define DEFINE_DEQUANT(fmt)                                                                       \
extern "C" __global__ void dequant_rows_##fmt(const u8* __restrict__ W, i64 row_bytes,            \
                                              const int* __restrict__ ids, i64 first_row,         \
                                              float* __restrict__ out, int n_rows, int K) {       \
    const int n_chunks = K >> 3, tail = K & 7;                                                    \
    const int per_row = n_chunks + tail;                                                          \
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;                                   \
    if (idx >= (i64)n_rows * per_row) return;                                                     \
    const int i = (int)(idx / per_row), c = (int)(idx % per_row);                                 \
    const i64 src = ids ? (i64)ids[i] : first_row + i;                                            \
    const u8* row = W + src * row_bytes;                                                          \
    float* o = out + (i64)i * K;                                                                  \
    if (c < n_chunks) {                                                                           \
        float w[8];                                                                               \
        dq8_##fmt(row, c, w);                                                                     \
        _Pragma("unroll") for (int j = 0; j < 8; ++j) o[8 * c + j] = w[j];                        \
    } else {                                                                                      \
        const int k = 8 * n_chunks + (c - n_chunks);                                              \
        o[k] = dq1_##fmt(row, k);                                                                 \
    }                                                                                             \
}

FOR_EACH_FORMAT(DEFINE_MATVEC)
FOR_EACH_FORMAT(DEFINE_DEQUANT)

// y[t, n] += bias[n] (after a cuBLAS product)
extern "C" __global__ void add_bias(float* __restrict__ y, const float* __restrict__ bias, int T, int N) {
    const i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (i64)T * N) y[i] += bias[i % N];
}
