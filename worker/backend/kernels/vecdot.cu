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

// y[slot][t, n] = sum_k x[t, k] W_e[n, k] (+ bias_e[n]) for t < T <= MMVQ_MAX_T: MMVQ_ROWS_PER_BLOCK rows a
// block, each row split over `parts` warps (vecdot.py's mmvq_parts: one warp up to K = 4096, then so that
// no lane walks more than two 32-value blocks of a row up to K = 8192; a long row is a chain of memory
// latencies a lane, and splitting it shortens the chain). Part p's lanes walk units 32 p + lane, step
// 32 parts, and the row's sum is warp_sum(part 0) + warp_sum(part 1) + ... in that order
// (mmvq_fold_parts), the same in every kernel here, so that fused kernels equal mmvq_<fmt> bit for bit.
// (Splitting a 2880-wide MXFP4 row over 4 warps, one row a block, measured slower than one warp:
// benchmarks/bench_matvec.py on the H200, 7.7 -> 9.2 us; the split here keeps 4 rows a block and
// starts at 2 warps a row only past K = 4096: a GPT-OSS decode step, K = 2880 and 4096, was faster on one warp.)
// Slots (blockIdx.y) run several weights of a stacked [E, N, K] tensor in one launch: slot j uses
// expert e = expert_ids ? expert_ids[j] : j, read on the device (a CUDA graph can replay it); its
// activations are rows [j T, j T + T) of the quantized input when x_per_slot, else rows [0, T). bias: [E, N] (expert_stride N) or [N].
// residual [slots T, N] (or NULL): y = residual + (W x + b), the order of add(residual, product).
#define MMVQ_ROWS_PER_BLOCK 4   // vecdot.py's; a block has 32 * MMVQ_ROWS_PER_BLOCK * parts threads
#define MMVQ_MAX_PARTS 4        // warps a row at most (vecdot.py's mmvq_parts): 512 threads, 128 registers a thread

// The row sums of one part's lane accumulators (warp_sum), folded over the row's parts in order: called
// by every warp of the block (it synchronizes the block when parts > 1); the sums are complete in acc[t]
// (t < T) on the warps of part 0. r: the row in the block, rows: rows a block, part_sums: shared
// [MMVQ_MAX_PARTS][rows][MMVQ_MAX_T] floats.
__device__ __forceinline__ void mmvq_fold_parts(float* acc, int T, int part, int parts, int r, int rows,
                                                float* part_sums) {
#pragma unroll
    for (int t = 0; t < MMVQ_MAX_T; ++t)
        if (t < T) acc[t] = warp_sum(acc[t]);
    if (parts == 1) return;
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int t = 0; t < MMVQ_MAX_T; ++t)
            if (t < T) part_sums[(part * rows + r) * MMVQ_MAX_T + t] = acc[t];
    }
    __syncthreads();
    if (part != 0) return;
#pragma unroll
    for (int t = 0; t < MMVQ_MAX_T; ++t) {
        if (t < T) {
            float s = part_sums[r * MMVQ_MAX_T + t];
            for (int p = 1; p < parts; ++p) s += part_sums[(p * rows + r) * MMVQ_MAX_T + t];
            acc[t] = s;
        }
    }
}

// Lane `lane` of part `part` walks its units of the row (mmvq_<fmt>'s order), two at a time where it has
// two: both units' loads are then issued before either is used (one memory latency, not two); the
// sum's order is that of walking them one by one.
#define MMVQ_WALK_AS(fmt, row, part, parts, ts, acc, T_, terms_)                                  \
    {                                                                                             \
        const int units_ = K / MMVQ_UNIT_##fmt, stride_ = 32 * (parts);                           \
        int u = 32 * (part) + lane;                                                               \
        for (; u + stride_ < units_; u += 2 * stride_) {                                          \
            vdot_##fmt(row, u, xq, xds, K, T_, ts, terms_, acc);                                  \
            vdot_##fmt(row, u + stride_, xq, xds, K, T_, ts, terms_, acc);                        \
        }                                                                                         \
        if (u < units_) vdot_##fmt(row, u, xq, xds, K, T_, ts, terms_, acc);                      \
    }

// The decode cases (one token; one or two terms) with T and terms known to the compiler: a unit's
// weight, activation and scale loads then sit in one basic block and are issued together, where the
// runtime `t < T` and `terms > 1` branches would make each wait for the one before (the same sums).
#define MMVQ_WALK(fmt, row, part, parts, ts, acc)                                                 \
    if (T == 1 && terms == 2) MMVQ_WALK_AS(fmt, row, part, parts, ts, acc, 1, 2)                 \
    else if (T == 1 && terms == 1) MMVQ_WALK_AS(fmt, row, part, parts, ts, acc, 1, 1)            \
    else MMVQ_WALK_AS(fmt, row, part, parts, ts, acc, T, terms)

#define DEFINE_MMVQ(fmt)                                                                          \
extern "C" __global__ void mmvq_##fmt(const u8* __restrict__ W, i64 row_bytes, i64 expert_bytes,  \
                                      const int* __restrict__ expert_ids, const i8* __restrict__ xq, \
                                      const float4* __restrict__ xds, i64 term_stride, int x_per_slot, \
                                      const float* __restrict__ bias, int bias_per_expert,        \
                                      const float* __restrict__ residual, float* __restrict__ y,  \
                                      int N, int K, int T, int terms, int parts) {                \
    __shared__ float part_sums[MMVQ_MAX_PARTS * MMVQ_ROWS_PER_BLOCK * MMVQ_MAX_T];                \
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;                                   \
    const int r = warp % MMVQ_ROWS_PER_BLOCK, part = warp / MMVQ_ROWS_PER_BLOCK;                  \
    const int n = blockIdx.x * MMVQ_ROWS_PER_BLOCK + r;                                           \
    const bool active = n < N;               /* no early return: the parts meet at a barrier */   \
    const int slot = blockIdx.y;                                                                  \
    const int e = active ? (expert_ids ? expert_ids[slot] : slot) : 0;                            \
    const u8* row = W + (i64)e * expert_bytes + (i64)n * row_bytes;                               \
    if (x_per_slot) {                                                                             \
        xq += (i64)slot * T * K;                                                                  \
        xds += (i64)slot * T * (K >> 5);                                                          \
    }                                                                                             \
    float acc[MMVQ_MAX_T];                                                                        \
    _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) acc[t] = 0.0f;                         \
    if (active) MMVQ_WALK(fmt, row, part, parts, term_stride, acc)                                \
    mmvq_fold_parts(acc, T, part, parts, r, MMVQ_ROWS_PER_BLOCK, part_sums);                      \
    if (!active || part != 0) return;                                                             \
    const float b = bias ? bias[(bias_per_expert ? (i64)e * N : 0) + n] : 0.0f;                   \
    _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) {                                      \
        if (t < T) {                                                                              \
            const i64 at = ((i64)slot * T + t) * N + n;                                           \
            if (lane == 0) y[at] = residual ? residual[at] + (acc[t] + b) : acc[t] + b;           \
        }                                                                                         \
    }                                                                                             \
}

FOR_EACH_VECDOT_FORMAT(DEFINE_MMVQ)

// mmvq_<fmt> for many rows of one warp each (an output product: tens of thousands of rows, several
// waves of warps): each warp walks MMVQ_JOINT_ROWS_<fmt> consecutive rows together, their loads in flight at
// once, so that fewer, longer-lived warps cover the rows. Same arguments (parts must be 1) and each
// row's sum in mmvq_<fmt>'s order: the same numbers. A row past N is walked as row N - 1 (no branch
// between the rows' loads) and not stored.
// (MMVQ_JOINT_ROWS_<fmt>: two for Q4_K/Q5_K, whose units take twice the registers; Q6_K's two rows
// take 165 registers, fewer rows in flight than one a warp: vecdot.py launches mmvq_q6_k instead.)
#define MMVQ_JOINT_ROWS_q4_0 4
#define MMVQ_JOINT_ROWS_q4_1 4
#define MMVQ_JOINT_ROWS_q5_0 4
#define MMVQ_JOINT_ROWS_q8_0 4
#define MMVQ_JOINT_ROWS_mxfp4 4
#define MMVQ_JOINT_ROWS_q4_k 2
#define MMVQ_JOINT_ROWS_q5_k 2
#define MMVQ_JOINT_ROWS_q6_k 1
#define MMVQ_JOINT_WALK(fmt, T_, terms_)                                                          \
    for (int u = lane; u < K / MMVQ_UNIT_##fmt; u += 32) {                                        \
        _Pragma("unroll") for (int j = 0; j < MMVQ_JOINT_ROWS; ++j)                               \
            vdot_##fmt(rows[j], u, xq, xds, K, T_, term_stride, terms_, acc[j]);                  \
    }
#define DEFINE_MMVQ_JOINT(fmt)                                                                    \
extern "C" __global__ void mmvq_joint_##fmt(const u8* __restrict__ W, i64 row_bytes, i64 expert_bytes, \
                                            const int* __restrict__ expert_ids, const i8* __restrict__ xq, \
                                            const float4* __restrict__ xds, i64 term_stride, int x_per_slot, \
                                            const float* __restrict__ bias, int bias_per_expert,  \
                                            const float* __restrict__ residual, float* __restrict__ y, \
                                            int N, int K, int T, int terms, int parts) {          \
    constexpr int MMVQ_JOINT_ROWS = MMVQ_JOINT_ROWS_##fmt;                                        \
    const int lane = threadIdx.x & 31;                                                            \
    const int n0 = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * MMVQ_JOINT_ROWS;       \
    if (n0 >= N) return;                                                                          \
    const int slot = blockIdx.y;                                                                  \
    const int e = expert_ids ? expert_ids[slot] : slot;                                           \
    const u8* rows[MMVQ_JOINT_ROWS];                                                              \
    _Pragma("unroll") for (int j = 0; j < MMVQ_JOINT_ROWS; ++j)                                   \
        rows[j] = W + (i64)e * expert_bytes + (i64)min(n0 + j, N - 1) * row_bytes;                \
    if (x_per_slot) {                                                                             \
        xq += (i64)slot * T * K;                                                                  \
        xds += (i64)slot * T * (K >> 5);                                                          \
    }                                                                                             \
    float acc[MMVQ_JOINT_ROWS][MMVQ_MAX_T];                                                       \
    _Pragma("unroll") for (int j = 0; j < MMVQ_JOINT_ROWS; ++j)                                   \
        _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) acc[j][t] = 0.0f;                  \
    if (T == 1 && terms == 2) MMVQ_JOINT_WALK(fmt, 1, 2)                 /* as MMVQ_WALK */       \
    else if (T == 1 && terms == 1) MMVQ_JOINT_WALK(fmt, 1, 1)                                     \
    else MMVQ_JOINT_WALK(fmt, T, terms)                                                           \
    _Pragma("unroll") for (int j = 0; j < MMVQ_JOINT_ROWS; ++j) {                                 \
        const int n = n0 + j;                                                                     \
        _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t)                                    \
            if (t < T) acc[j][t] = warp_sum(acc[j][t]);                                           \
        if (n < N && lane == 0) {                                                                 \
            const float b = bias ? bias[(bias_per_expert ? (i64)e * N : 0) + n] : 0.0f;           \
            _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) {                              \
                if (t < T) {                                                                      \
                    const i64 at = ((i64)slot * T + t) * N + n;                                   \
                    y[at] = residual ? residual[at] + (acc[j][t] + b) : acc[j][t] + b;            \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
}

FOR_EACH_VECDOT_FORMAT(DEFINE_MMVQ_JOINT)

// Up to MMVQ_MAX_SEGMENTS products of one quantized input in one launch (q, k, v; gate, up): segment
// j has its own weight (format code fmt_j, MMVQ_FMT_<fmt>), N_j rows, bias (or NULL) and output
// y_j [T, N_j]; it takes blocks [end_{j-1}, end_j) of the grid, rows split over parts as in mmvq_<fmt>
// (one K, so the same parts), each segment equal to mmvq_<fmt> of its weight alone.
// The format switch is uniform over a block, so it costs no divergence.
#define MMVQ_SEGMENT_CASE(fmt)                                                                    \
    case MMVQ_FMT_##fmt:                                                                          \
        MMVQ_WALK(fmt, row, part, parts, ts, acc)                                                 \
        break;

extern "C" __global__ void mmvq_segments(const i8* __restrict__ xq, const float4* __restrict__ xds, i64 ts,
                                         int K, int T, int terms, int parts,
                                         const u8* W0, i64 row_bytes0, const float* bias0, float* y0, int N0,
                                         int fmt0, int end0,
                                         const u8* W1, i64 row_bytes1, const float* bias1, float* y1, int N1,
                                         int fmt1, int end1,
                                         const u8* W2, i64 row_bytes2, const float* bias2, float* y2, int N2,
                                         int fmt2) {
    __shared__ float part_sums[MMVQ_MAX_PARTS * MMVQ_ROWS_PER_BLOCK * MMVQ_MAX_T];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r = warp % MMVQ_ROWS_PER_BLOCK, part = warp / MMVQ_ROWS_PER_BLOCK;
    const int blk = blockIdx.x;
    const u8* W = W0; i64 row_bytes = row_bytes0; const float* bias = bias0; float* y = y0;
    int N = N0, fmt = fmt0, first = 0;
    if (blk >= end1) {
        W = W2; row_bytes = row_bytes2; bias = bias2; y = y2; N = N2; fmt = fmt2; first = end1;
    } else if (blk >= end0) {
        W = W1; row_bytes = row_bytes1; bias = bias1; y = y1; N = N1; fmt = fmt1; first = end0;
    }
    const int n = (blk - first) * MMVQ_ROWS_PER_BLOCK + r;
    const bool active = n < N;
    const u8* row = W + (i64)n * row_bytes;
    float acc[MMVQ_MAX_T];
#pragma unroll
    for (int t = 0; t < MMVQ_MAX_T; ++t) acc[t] = 0.0f;
    if (active) {
        switch (fmt) { FOR_EACH_VECDOT_FORMAT(MMVQ_SEGMENT_CASE) }
    }
    mmvq_fold_parts(acc, T, part, parts, r, MMVQ_ROWS_PER_BLOCK, part_sums);
    if (!active || part != 0) return;
    const float b = bias ? bias[n] : 0.0f;
#pragma unroll
    for (int t = 0; t < MMVQ_MAX_T; ++t) {
        if (t < T && lane == 0) y[(i64)t * N + n] = acc[t] + b;
    }
}

// The gate and up products of one quantized input, SwiGLU, and the result's int8 blocks for the down
// product, in one launch (F % 32 == 0): block b computes outputs [32 b, 32 b + 32), i.e. 64 rows (32 of
// gate, 32 of up), with MMVQ_SWIGLU_WARPS warps; warp w walks rows w, w + 16, w + 32, w + 48 together (the
// four rows' loads in flight at once (two and two for Q6_K), where one row after another would wait for memory four times),
// each row split into `parts` walked one after another and summed as mmvq_<fmt> sums them. Then warp
// t < T applies silu(gate) * up (swiglu_f: elementwise.cu's swiglu; clamped: swiglu_clamped_f, GPT-OSS)
// to token t's 32 values, writes them to y [slots, T, F] and quantizes them as one block into yq/yds
// (term stride slots T F); yq/yds must not be xq/xds. y equals swiglu(mmvq(gate), mmvq(up)) bit for
// bit, and yq/yds swiglu_q8's blocks of it.
// Expert slots (blockIdx.y, as mmvq_<fmt>'s): slot j uses expert e = expert_ids ? expert_ids[j] : j of
// stacked [E, F, K] gate and up weights (expert_bytes apart) and biases bias_g/bias_u [E, F] (or NULL),
// all slots reading the same activations: a MoE token's chosen experts' gate, up and SwiGLU in one launch.
#define MMVQ_SWIGLU_WARPS 16
#define MMVQ_SWIGLU_ROWS 4       // rows a warp: 64 / MMVQ_SWIGLU_WARPS
// Rows a warp walks together (MMVQ_SWIGLU_ROWS in groups of this many): Q6_K's unit takes twice the
// registers of the others' (four rows of it would exceed a 512-thread block's 128 registers a thread).
#define MMVQ_SWIGLU_JOINT_q4_0 4
#define MMVQ_SWIGLU_JOINT_q4_1 4
#define MMVQ_SWIGLU_JOINT_q5_0 4
#define MMVQ_SWIGLU_JOINT_q8_0 4
#define MMVQ_SWIGLU_JOINT_mxfp4 4
#define MMVQ_SWIGLU_JOINT_q4_k 4
#define MMVQ_SWIGLU_JOINT_q5_k 4
#define MMVQ_SWIGLU_JOINT_q6_k 2
#define MMVQ_SWIGLU_WALK(fmt, T_, terms_)                                                         \
    for (int u = 32 * p + lane; u < K / MMVQ_UNIT_##fmt; u += 32 * parts) {                       \
        _Pragma("unroll") for (int j = 0; j < MMVQ_SWIGLU_JOINT_##fmt; ++j)                       \
            vdot_##fmt(rows[j0 + j], u, xq, xds, K, T_, ts, terms_, acc[j]);                      \
    }
// Two instances a format: mmvq_swiglu_<fmt> (one 512-thread block an SM at up to 128 registers a thread) and
// mmvq_swiglu_x2_<fmt> (at most 64 registers, two blocks an SM: fewer waves where the grid exceeds the SMs;
// Q5_0 and Q8_0 fit without spills, the others spill a little). The same code: the same sums, bit for bit.
#define DEFINE_MMVQ_SWIGLU(fmt)                                                                   \
    DEFINE_MMVQ_SWIGLU_KERNEL(fmt, mmvq_swiglu_##fmt, 1)                                          \
    DEFINE_MMVQ_SWIGLU_KERNEL(fmt, mmvq_swiglu_x2_##fmt, 2)
#define DEFINE_MMVQ_SWIGLU_KERNEL(fmt, name, min_blocks)                                          \
extern "C" __global__ void __launch_bounds__(32 * MMVQ_SWIGLU_WARPS, min_blocks)                  \
name(const u8* __restrict__ Wg, const u8* __restrict__ Wu, i64 row_bytes,                         \
                                             i64 expert_bytes, const int* __restrict__ expert_ids, \
                                             const float* __restrict__ bias_g, const float* __restrict__ bias_u, \
                                             const i8* __restrict__ xq, const float4* __restrict__ xds, \
                                             float* __restrict__ y, i8* __restrict__ yq,           \
                                             float4* __restrict__ yds, int F, int K, int T, int terms, \
                                             int parts, int clamped, int has_limit, float limit, float alpha) { \
    __shared__ float sums[MMVQ_MAX_PARTS][64][MMVQ_MAX_T];   /* [part][gate i | up 32 + i][t] */  \
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slot = blockIdx.y;                \
    const int e = expert_ids ? expert_ids[slot] : slot;                                           \
    const i64 ts = (i64)T * K;                                                                    \
    const u8* rows[MMVQ_SWIGLU_ROWS];                                                             \
    _Pragma("unroll") for (int j = 0; j < MMVQ_SWIGLU_ROWS; ++j) {                                \
        const int r = warp + j * MMVQ_SWIGLU_WARPS;                                               \
        rows[j] = (r < 32 ? Wg : Wu) + (i64)e * expert_bytes + (32 * (i64)blockIdx.x + (r & 31)) * row_bytes; \
    }                                                                                             \
    for (int p = 0; p < parts; ++p) {                                                             \
        _Pragma("unroll") for (int j0 = 0; j0 < MMVQ_SWIGLU_ROWS; j0 += MMVQ_SWIGLU_JOINT_##fmt) { \
            float acc[MMVQ_SWIGLU_JOINT_##fmt][MMVQ_MAX_T];                                       \
            _Pragma("unroll") for (int j = 0; j < MMVQ_SWIGLU_JOINT_##fmt; ++j)                   \
                _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) acc[j][t] = 0.0f;          \
            if (T == 1 && terms == 2) MMVQ_SWIGLU_WALK(fmt, 1, 2)      /* as MMVQ_WALK */          \
            else if (T == 1 && terms == 1) MMVQ_SWIGLU_WALK(fmt, 1, 1)                            \
            else MMVQ_SWIGLU_WALK(fmt, T, terms)                                                  \
            _Pragma("unroll") for (int j = 0; j < MMVQ_SWIGLU_JOINT_##fmt; ++j) {                 \
                _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) {                          \
                    if (t < T) {                                                                  \
                        const float s = warp_sum(acc[j][t]);                                      \
                        if (lane == 0) sums[p][warp + (j0 + j) * MMVQ_SWIGLU_WARPS][t] = s;       \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    __syncthreads();                                                                              \
    if (warp < T) {                                                                               \
        float g = sums[0][lane][warp], up = sums[0][32 + lane][warp];                             \
        for (int p = 1; p < parts; ++p) {                     /* mmvq_fold_parts's order */       \
            g += sums[p][lane][warp];                                                             \
            up += sums[p][32 + lane][warp];                                                       \
        }                                                                                         \
        const i64 n = 32 * (i64)blockIdx.x + lane, row = (i64)slot * T + warp;                    \
        if (bias_g) g += bias_g[(i64)e * F + n];              /* mmvq's epilogue: s + b */        \
        if (bias_u) up += bias_u[(i64)e * F + n];                                                 \
        const float v = clamped ? swiglu_clamped_f(g, up, has_limit, limit, alpha) : swiglu_f(g, up); \
        y[row * F + n] = v;                                                                       \
        quantize_block_warp(v, yq + row * F + n, (i64)gridDim.y * T * F, yds + row * (F >> 5) + blockIdx.x, terms); \
    }                                                                                             \
}

FOR_EACH_VECDOT_FORMAT(DEFINE_MMVQ_SWIGLU)
