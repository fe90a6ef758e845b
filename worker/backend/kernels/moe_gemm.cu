// Grouped expert products of a GPT-OSS prefill (T >= 2 tokens) on TF32 tensor cores.
//
// moe.cu's moe_plan sorts the (token, slot) pairs by expert and cuts each expert's run into tiles of
// tile_rows (16, 32 or 64) sorted rows. A block takes one tile and MOE_BN output columns: it gathers the tile's rows of
// the input, dequantizes the expert's weight rows on the fly (quant.cuh) into shared memory, and
// multiplies with mma.sync (mma_tf32.cuh) in the prefill products' split-TF32 scheme
// (kernels/matmul.py): every activation x = x_hi + x_lo, and y = x_hi W + x_lo W where each weight
// value is a TF32 value already (MXFP4), else y = x_hi W_hi + x_hi W_lo + x_lo W_hi; each term x_k W_nk
// is then off by at most 2^-21 |x_k| |W_nk| and the sums are float32, as the prefill products.
//   moe_gate_up_<fmt>: h[row] = swiglu(x[token(row)] Wgate_e^T + bgate_e, x[token(row)] Wup_e^T + bup_e)
//   moe_down_<fmt>:    y[row] = h[row] Wdown_e^T + bdown_e
// Tiles with rows = 0 (the plan's unused entries) exit at once.
#include "quant.cuh"
#include "tf32.cuh"
#include "activation.cuh"
#include "mma_tf32.cuh"

#define MOE_BM 64        // the most sorted rows (token-expert pairs) a tile: kernels/moe.py MOE_TILE_ROWS
#define MOE_BN 64        // output columns a block
#define MOE_BK 32        // k values a step: one 32-value block of every format but the K-quants
#define MOE_LDS 36       // shared row stride in floats: fragment reads (row g, column q) hit 32 banks
#define MOE_THREADS 128  // 4 warps

__device__ __forceinline__ void split_bits(float v, u32& hi, u32& lo) {
    float h, l;
    tf32_split(v, h, l);
    hi = __float_as_uint(h);
    lo = __float_as_uint(l);
}

// Shared memory of a block, the largest tile's (declared once in each kernel: the three tile heights are
// instantiated in one kernel, and their own static arrays would add up).
struct MoeShared {
    float a[MOE_BM][MOE_LDS];          // the tile's input rows, k0 .. k0 + 31
    float b[2][MOE_BN][MOE_LDS];       // the weights' rows n0 .. n0 + 63 (gate, up; or down)
    int src_row[MOE_BM];               // where each tile row's input comes from (-1: past the tile's rows)
};

// A tile of BM sorted rows times MOE_BN outputs; WARPS_M x (4 / WARPS_M) warps, each (BM / WARPS_M) rows x
// (64 / (4 / WARPS_M)) columns. GATE_UP: two weights (gate, up) and the SwiGLU epilogue, input rows gathered
// from x [T, K] by the pair order (row i of the tile is token order[first + i] / k_used); else one weight
// (down), input rows first + i of h. out [n_pairs, N] in sorted-row order. Biases [E, N] or NULL.
template <class DQ, bool EXACT, bool GATE_UP, int BM, int WARPS_M>
__device__ __forceinline__ void moe_grouped_tile(
        MoeShared& sm, const float* __restrict__ x, const int* __restrict__ order, int k_used,
        const int* __restrict__ tiles, const u8* __restrict__ W1, const u8* __restrict__ W2, i64 row_bytes,
        i64 expert_bytes, const float* __restrict__ b1, const float* __restrict__ b2, float* __restrict__ out,
        int N, int K, int clamped, int has_limit, float limit, float alpha) {
    constexpr int NMAT = GATE_UP ? 2 : 1;
    constexpr int WARPS_N = (MOE_THREADS / 32) / WARPS_M;
    constexpr int MT = BM / WARPS_M / 16, NT = MOE_BN / WARPS_N / 8;    // m16n8 tiles a warp
    static_assert(MT >= 1 && NT >= 1 && MT * 16 * WARPS_M == BM && NT * 8 * WARPS_N == MOE_BN, "warp tiling");
    const int* tile = tiles + 4 * blockIdx.y;
    const int expert = tile[0], first = tile[1], rows = tile[2];
    if (rows <= 0) return;
    const int n0 = blockIdx.x * MOE_BN;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = (warp / WARPS_N) * (MT * 16), wn = (warp % WARPS_N) * (NT * 8);
    const int g = lane >> 2, q = lane & 3;
    if (tid < BM)
        sm.src_row[tid] = tid < rows ? (GATE_UP ? order[first + tid] / k_used : first + tid) : -1;
    const u8* w1 = W1 + (i64)expert * expert_bytes;
    const u8* w2 = GATE_UP ? W2 + (i64)expert * expert_bytes : w1;
    float acc[NMAT][MT][NT][4];
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[m][mt][nt][i] = 0.0f;
    __syncthreads();
    for (int k0 = 0; k0 < K; k0 += MOE_BK) {
        // the tile's input rows: BM x 32 floats as float4, zero past the tile's rows
        for (int i = tid; i < BM * (MOE_BK / 4); i += MOE_THREADS) {
            const int r = i / (MOE_BK / 4), c4 = i % (MOE_BK / 4);
            const int src = sm.src_row[r];
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (src >= 0) v = *(const float4*)(x + (i64)src * K + k0 + 4 * c4);
            *(float4*)&sm.a[r][4 * c4] = v;
        }
        // the weights' rows n0 .. n0 + 63, 8 values a chunk, zero past N
        for (int i = tid; i < NMAT * MOE_BN * (MOE_BK / 8); i += MOE_THREADS) {
            const int m = i / (MOE_BN * (MOE_BK / 8)), r = (i / (MOE_BK / 8)) % MOE_BN, c = i % (MOE_BK / 8);
            const int n = n0 + r;
            float w[8];
            if (n < N) {
                DQ::dq8((m ? w2 : w1) + (i64)n * row_bytes, (k0 >> 3) + c, w);
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j) w[j] = 0.0f;
            }
            *(float4*)&sm.b[m][r][8 * c] = make_float4(w[0], w[1], w[2], w[3]);
            *(float4*)&sm.b[m][r][8 * c + 4] = make_float4(w[4], w[5], w[6], w[7]);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MOE_BK; kk += 8) {
            u32 a_hi[MT][4], a_lo[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int r = wm + 16 * mt + g;
                split_bits(sm.a[r][kk + q], a_hi[mt][0], a_lo[mt][0]);
                split_bits(sm.a[r + 8][kk + q], a_hi[mt][1], a_lo[mt][1]);
                split_bits(sm.a[r][kk + q + 4], a_hi[mt][2], a_lo[mt][2]);
                split_bits(sm.a[r + 8][kk + q + 4], a_hi[mt][3], a_lo[mt][3]);
            }
#pragma unroll
            for (int m = 0; m < NMAT; ++m) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int c = wn + 8 * nt + g;
                    u32 b_hi[2], b_lo[2];
                    if (EXACT) {
                        b_hi[0] = __float_as_uint(sm.b[m][c][kk + q]);
                        b_hi[1] = __float_as_uint(sm.b[m][c][kk + q + 4]);
                    } else {
                        split_bits(sm.b[m][c][kk + q], b_hi[0], b_lo[0]);
                        split_bits(sm.b[m][c][kk + q + 4], b_hi[1], b_lo[1]);
                    }
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        // the small terms first
                        mma_tf32_16x8x8(acc[m][mt][nt], a_lo[mt], b_hi);
                        if (!EXACT) mma_tf32_16x8x8(acc[m][mt][nt], a_hi[mt], b_lo);
                        mma_tf32_16x8x8(acc[m][mt][nt], a_hi[mt], b_hi);
                    }
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = wm + 16 * mt + g + 8 * (i >> 1);
                const int n = n0 + wn + 8 * nt + 2 * q + (i & 1);
                if (r >= rows || n >= N) continue;
                const i64 o = (i64)(first + r) * N + n;
                float v = acc[0][mt][nt][i] + (b1 ? b1[(i64)expert * N + n] : 0.0f);
                if (GATE_UP) {
                    const float u = acc[NMAT - 1][mt][nt][i] + (b2 ? b2[(i64)expert * N + n] : 0.0f);
                    v = clamped ? swiglu_clamped_f(v, u, has_limit, limit, alpha) : swiglu_f(v, u);
                }
                out[o] = v;
            }
        }
    }
}

// One kernel a format serves the three tile heights (kernels/moe.py picks one from the pairs an expert gets
// on average): 64 rows as 2 x 2 warps of 32 x 32, 32 rows as 2 x 2 of 16 x 32, 16 rows as 1 x 4 of 16 x 16.
template <class DQ, bool EXACT, bool GATE_UP>
__device__ __forceinline__ void moe_grouped(
        int tile_rows, MoeShared& sm, const float* __restrict__ x, const int* __restrict__ order, int k_used,
        const int* __restrict__ tiles, const u8* __restrict__ W1, const u8* __restrict__ W2, i64 row_bytes,
        i64 expert_bytes, const float* __restrict__ b1, const float* __restrict__ b2, float* __restrict__ out,
        int N, int K, int clamped, int has_limit, float limit, float alpha) {
    if (tile_rows == 16)
        moe_grouped_tile<DQ, EXACT, GATE_UP, 16, 1>(sm, x, order, k_used, tiles, W1, W2, row_bytes, expert_bytes,
                                                    b1, b2, out, N, K, clamped, has_limit, limit, alpha);
    else if (tile_rows == 32)
        moe_grouped_tile<DQ, EXACT, GATE_UP, 32, 2>(sm, x, order, k_used, tiles, W1, W2, row_bytes, expert_bytes,
                                                    b1, b2, out, N, K, clamped, has_limit, limit, alpha);
    else
        moe_grouped_tile<DQ, EXACT, GATE_UP, 64, 2>(sm, x, order, k_used, tiles, W1, W2, row_bytes, expert_bytes,
                                                    b1, b2, out, N, K, clamped, has_limit, limit, alpha);
}

// The formats with grouped kernels (kernels/moe.py MOE_GEMM_FORMATS) and whether each value is a TF32
// value already (kernels/matmul.py TF32_EXACT_FORMATS).
#define FOR_EACH_MOE_FORMAT(X) \
    X(q4_0, false) X(q4_1, false) X(q5_0, false) X(q8_0, false) X(mxfp4, true) X(q4_k, false) X(q5_k, false) \
    X(q6_k, false)

#define DEFINE_MOE_GEMM(fmt, exact)                                                                          \
struct moe_dq_##fmt {                                                                                        \
    __device__ static __forceinline__ void dq8(const u8* r, int c, float* w) { dq8_##fmt(r, c, w); }        \
};                                                                                                           \
extern "C" __global__ void __launch_bounds__(MOE_THREADS) moe_gate_up_##fmt(                                 \
        const float* __restrict__ x, const int* __restrict__ order, int k_used, const int* __restrict__ tiles,\
        int tile_rows, const u8* __restrict__ gate, const u8* __restrict__ up, i64 row_bytes,                \
        i64 expert_bytes, const float* __restrict__ bias_gate, const float* __restrict__ bias_up,           \
        float* __restrict__ h, int F, int D, int clamped, int has_limit, float limit, float alpha) {        \
    __shared__ __align__(16) MoeShared sm;                                                                   \
    moe_grouped<moe_dq_##fmt, exact, true>(tile_rows, sm, x, order, k_used, tiles, gate, up, row_bytes,     \
                                           expert_bytes, bias_gate, bias_up, h, F, D, clamped, has_limit,   \
                                           limit, alpha);                                                   \
}                                                                                                            \
extern "C" __global__ void __launch_bounds__(MOE_THREADS) moe_down_##fmt(                                    \
        const float* __restrict__ h, const int* __restrict__ tiles, int tile_rows, const u8* __restrict__ down,\
        i64 row_bytes, i64 expert_bytes, const float* __restrict__ bias_down, float* __restrict__ y,        \
        int D, int F) {                                                                                      \
    __shared__ __align__(16) MoeShared sm;                                                                   \
    moe_grouped<moe_dq_##fmt, exact, false>(tile_rows, sm, h, nullptr, 1, tiles, down, nullptr, row_bytes,  \
                                            expert_bytes, bias_down, nullptr, y, D, F, 0, 0, 0.0f, 1.0f);   \
}

FOR_EACH_MOE_FORMAT(DEFINE_MOE_GEMM)
