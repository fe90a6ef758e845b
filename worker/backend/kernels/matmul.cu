// Products with a weight kept in its stored format (dequantized on the fly), and row
// dequantization (embedding lookup; the prefill path's workspace tiles for cuBLAS).
// Prefill products run on TF32 tensor cores in three terms (matmul.py, prefill_product):
// every operand v is split into hi = v rounded to TF32 and lo = (v - hi) rounded to TF32.
#include "quant.cuh"
#include "tf32.cuh"

#define MATVEC_MAX_T 4   // tokens one launch of the fused kernel handles (decode: 1)
#define MATVEC_ROWS_PER_BLOCK 4   // matmul.py's

// y[t, n] = sum_k x[t, k] * W[n, k] (+ bias[n]) for t < T: grid.y walks the tokens in groups of
// MATVEC_MAX_T (decode: one group; a prefill product of few rows, GPT-OSS's router, one group a block
// row, matmul.py's few_rows).
// Each output row is split over `parts` warps (a block: MATVEC_ROWS_PER_BLOCK rows x parts warps):
// part p's lanes take 8-value chunks c = 32 p + lane, step 32 parts; the parts' warp sums add in
// part order. A product of few rows (GPT-OSS's router: 32 rows of 2880) takes several warps a row,
// where one warp a row would leave most SMs idle and make each lane's walk a long chain of loads.
#define MATVEC_MAX_PARTS 8
#define DEFINE_MATVEC(fmt)                                                                        \
extern "C" __global__ void matvec_##fmt(const u8* __restrict__ W, i64 row_bytes,                  \
                                        const float* __restrict__ x, const float* __restrict__ bias, \
                                        float* __restrict__ y, int N, int K, int T, int parts) {  \
    __shared__ float part_sums[MATVEC_MAX_PARTS][MATVEC_ROWS_PER_BLOCK][MATVEC_MAX_T];            \
    x += (i64)blockIdx.y * MATVEC_MAX_T * K;  /* this block's group of tokens */                  \
    y += (i64)blockIdx.y * MATVEC_MAX_T * N;                                                      \
    T = min(T - (int)blockIdx.y * MATVEC_MAX_T, MATVEC_MAX_T);                                    \
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;                                   \
    const int r = warp % MATVEC_ROWS_PER_BLOCK, part = warp / MATVEC_ROWS_PER_BLOCK;              \
    const int n = blockIdx.x * MATVEC_ROWS_PER_BLOCK + r;                                         \
    const bool active = n < N;               /* no early return: the parts meet at a barrier */   \
    const u8* row = W + (i64)(active ? n : 0) * row_bytes;                                        \
    float acc[MATVEC_MAX_T];                                                                      \
    _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t) acc[t] = 0.0f;                       \
    const int n_chunks = K >> 3;                                                                  \
    if (active) {                                                                                 \
        for (int c = 32 * part + lane; c < n_chunks; c += 32 * parts) {                           \
            float w[8];                                                                           \
            dq8_##fmt(row, c, w);                                                                 \
            _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t) {                            \
                if (t < T) {                                                                      \
                    const float* xp = x + (i64)t * K + 8 * c;                                     \
                    _Pragma("unroll") for (int i = 0; i < 8; ++i) acc[t] = fmaf(w[i], xp[i], acc[t]); \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        if (part == 0) {                                                                          \
            for (int k = 8 * n_chunks + lane; k < K; k += 32) {  /* float formats: K % 8 tail */  \
                const float wk = dq1_##fmt(row, k);                                               \
                _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t)                          \
                    if (t < T) acc[t] = fmaf(wk, x[(i64)t * K + k], acc[t]);                      \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t) {                                    \
        if (t < T) {                                                                              \
            const float s = warp_sum(acc[t]);                                                     \
            if (parts > 1 && lane == 0) part_sums[part][r][t] = s;                                \
            acc[t] = s;                                                                           \
        }                                                                                         \
    }                                                                                             \
    if (parts > 1) __syncthreads();                                                               \
    if (!active || part != 0 || lane != 0) return;                                                \
    _Pragma("unroll") for (int t = 0; t < MATVEC_MAX_T; ++t) {                                    \
        if (t < T) {                                                                              \
            float s = acc[t];                                                                     \
            for (int p = 1; p < parts; ++p) s += part_sums[p][r][t];                              \
            y[(i64)t * N + n] = s + (bias ? bias[n] : 0.0f);                                      \
        }                                                                                         \
    }                                                                                             \
}

// Eight values to 8 floats at p: two 16-byte stores where p is 16-byte aligned (a warp's stores
// then cover whole sectors; eight scalar stores a thread, 32 bytes apart across the warp, made the
// dequantization store-bound), else eight scalar stores.
__device__ __forceinline__ void store8(float* p, const float* v) {
    if (((unsigned long long)p & 15) == 0) {
        ((float4*)p)[0] = make_float4(v[0], v[1], v[2], v[3]);
        ((float4*)p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
        _Pragma("unroll") for (int j = 0; j < 8; ++j) p[j] = v[j];
    }
}

// out[i, k] = W[row_i, k] for i < n_rows, row_i = ids ? ids[i] : first_row + i.
// One thread per 8-value chunk (float formats: per value in the K % 8 tail). The launcher keeps
// n_rows * chunks a row under 2^31, so the index arithmetic is 32-bit (a 64-bit division costs
// dozens of instructions a thread).
#define DEFINE_DEQUANT(fmt)                                                                       \
extern "C" __global__ void dequant_rows_##fmt(const u8* __restrict__ W, i64 row_bytes,            \
                                              const int* __restrict__ ids, i64 first_row,         \
                                              float* __restrict__ out, int n_rows, int K) {       \
    const u32 n_chunks = (u32)K >> 3, tail = (u32)K & 7;                                          \
    const u32 per_row = n_chunks + tail;                                                          \
    const u32 idx = blockIdx.x * blockDim.x + threadIdx.x;                                        \
    if (idx >= (u32)n_rows * per_row) return;                                                     \
    const u32 i = idx / per_row, c = idx - i * per_row;                                           \
    const i64 src = ids ? (i64)ids[i] : first_row + i;                                            \
    const u8* row = W + src * row_bytes;                                                          \
    float* o = out + (i64)i * K;                                                                  \
    if (c < n_chunks) {                                                                           \
        float w[8];                                                                               \
        dq8_##fmt(row, c, w);                                                                     \
        store8(o + 8 * c, w);                                                                     \
    } else {                                                                                      \
        const int k = 8 * n_chunks + (c - n_chunks);                                              \
        o[k] = dq1_##fmt(row, k);                                                                 \
    }                                                                                             \
}

// out[i, 0:K] = hi(W[first_row + i]), out[i, K:2K] = lo(W[first_row + i]) for i < n_rows: a weight
// tile of the split prefill product (row stride 2K). Chunking and index width as dequant_rows.
#define DEFINE_DEQUANT_SPLIT(fmt)                                                                 \
extern "C" __global__ void dequant_split_rows_##fmt(const u8* __restrict__ W, i64 row_bytes,      \
                                                    i64 first_row, float* __restrict__ out,      \
                                                    int n_rows, int K) {                          \
    const u32 n_chunks = (u32)K >> 3, tail = (u32)K & 7;                                          \
    const u32 per_row = n_chunks + tail;                                                          \
    const u32 idx = blockIdx.x * blockDim.x + threadIdx.x;                                        \
    if (idx >= (u32)n_rows * per_row) return;                                                     \
    const u32 i = idx / per_row, c = idx - i * per_row;                                           \
    const u8* row = W + (first_row + i) * row_bytes;                                              \
    float* hi = out + (i64)i * 2 * K;                                                             \
    float* lo = hi + K;                                                                           \
    if (c < n_chunks) {                                                                           \
        float w[8], h[8], l[8];                                                                   \
        dq8_##fmt(row, c, w);                                                                     \
        _Pragma("unroll") for (int j = 0; j < 8; ++j) tf32_split(w[j], h[j], l[j]);               \
        store8(hi + 8 * c, h);                                                                    \
        store8(lo + 8 * c, l);                                                                    \
    } else {                                                                                      \
        const int k = 8 * n_chunks + (c - n_chunks);                                              \
        tf32_split(dq1_##fmt(row, k), hi[k], lo[k]);                                              \
    }                                                                                             \
}

FOR_EACH_FORMAT(DEFINE_MATVEC)
FOR_EACH_FORMAT(DEFINE_DEQUANT)
FOR_EACH_FORMAT(DEFINE_DEQUANT_SPLIT)

// xs[t] = [hi(x[t]) | hi(x[t]) | lo(x[t])] (row stride 3K): the activations of the split prefill
// product. Columns [0, 2K) meet a [W_hi | W_lo] tile, columns [2K, 3K) meet W_hi.
extern "C" __global__ void split_tf32_rows(const float* __restrict__ x, float* __restrict__ xs, int T, int K) {
    const i64 n = (i64)T * K;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 t = i / K, k = i - t * K;
        float hi, lo;
        tf32_split(x[i], hi, lo);
        float* row = xs + t * 3 * K;
        row[k] = hi;
        row[K + k] = hi;
        row[2 * K + k] = lo;
    }
}

// y[t, n] = residual[t, n] + bias[n], either may be NULL (then 0): the start value a product with
// beta = 1 accumulates onto. residual may be y itself.
extern "C" __global__ void bias_residual_init(float* __restrict__ y, const float* __restrict__ bias,
                                              const float* residual, int T, int N) {
    const i64 n = (i64)T * N;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] = (residual ? residual[i] : 0.0f) + (bias ? bias[i % N] : 0.0f);
}

// y[t, n] += bias[n] + residual[t, n], either may be NULL: one epilogue launch after a product.
extern "C" __global__ void add_bias_residual(float* __restrict__ y, const float* __restrict__ bias,
                                             const float* __restrict__ residual, int T, int N) {
    const i64 n = (i64)T * N;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        y[i] += (bias ? bias[i % N] : 0.0f) + (residual ? residual[i] : 0.0f);
}
