// Prefill products of Q8_0 weights on int8 tensor cores (llama.cpp's MMQ idea, our code): y[T, N] = x[T, K] @ W[N, K]^T
// with the activations as vecdot.cu's quantize_q8 writes them (one or two int8 terms a value, per-32-block scales
// d0, d1) and W in its stored Q8_0 blocks (d:f16 | q[32]:int8). For each 32-wide k block the int8 products sum
// exactly in int32 on mma.sync m16n8k32 (mma_s8.cuh), one sum a term; the block's contribution
//     d_w[n, b] * (d0[t, b] * S0 + d1[t, b] * S1)
// is added in float32. Launch geometry: mmq.py.
//
// A block computes an MMQ_BM x MMQ_BN tile of y (tokens x weight rows) with 8 warps in 2 x 4, each warp 32 x 16
// (two 16-row by two 8-column mma tiles). A stage holds MMQ_KB 32-value blocks of k: both activation terms and
// the weight quants in shared memory (rows padded by 16 bytes, so that the fragment loads of the 8 rows g and
// 4 words q of a warp fall in 32 different banks), and their scales. The next stage's global loads are issued
// into registers before the current stage's products (one buffer in shared memory, 30 KB static). At most 128
// registers a thread (spill-free with nvcc 13 for sm_90): two blocks, 16 warps, an SM.
// Q8_0 blocks are 34 bytes, so weight rows are only 2-byte aligned: quants are read as aligned words joined
// by funnel shifts (vecdot.cuh's load16_any, which reads up to 4 bytes past a row: WEIGHT_TAIL_PAD).
// Rows past T or N and blocks past K are zero-filled and never stored. A grid of few tiles (GPT-OSS's k and v products
// at T = 128: 16) splits each tile's k stages over several blocks (mmq.py's k_splits), whose partial sums
// mmq_sum_splits adds in a fixed order: the same result whatever the order blocks run in.
#include "vecdot.cuh"
#include "mma_s8.cuh"
#include "mma_bf16.cuh"

#define MMQ_BM 64              // tokens a block (mmq.py)
#define MMQ_BN 64              // weight rows a block (mmq.py)
#define MMQ_KB 4               // 32-value k blocks a stage
#define MMQ_WARPS_M 2          // warps along the tokens
#define MMQ_WARPS_N 4          // warps along the weight rows
#define MMQ_THREADS 256        // 32 MMQ_WARPS_M MMQ_WARPS_N (mmq.py); a plain number for __launch_bounds__
#define MMQ_MI (MMQ_BM / (16 * MMQ_WARPS_M))           // 16-row mma tiles a warp
#define MMQ_NI (MMQ_BN / (8 * MMQ_WARPS_N))            // 8-column mma tiles a warp
#define MMQ_ROW (MMQ_KB * 32 + 16)                     // bytes of a staged row (16 bytes of padding)
#define MMQ_X_CHUNKS (2 * MMQ_BM * MMQ_KB * 2)         // 16-byte activation chunks a stage (two terms)
#define MMQ_X_PER_THREAD (MMQ_X_CHUNKS / MMQ_THREADS)
#define MMQ_W_PER_THREAD (MMQ_BN * MMQ_KB / MMQ_THREADS)  // (row, k block) weight pairs a thread
#define MMQ_XD_PER_THREAD (MMQ_BM * MMQ_KB / MMQ_THREADS)

// An int32 block sum as a float, exactly, on the integer and FP32 pipes instead of the slower conversion unit (I2F):
// |s| <= 32 * 128 * 128 = 2^19 < 2^22, so the bits of 1.5 * 2^23 plus s are those of the float 1.5 * 2^23 + s (the
// spacing of floats there is 1), and subtracting 1.5 * 2^23 is exact.
__device__ __forceinline__ float mmq_exact_float(int s) { return __int_as_float(0x4B400000 + s) - 12582912.0f; }

static_assert(MMQ_THREADS == 32 * MMQ_WARPS_M * MMQ_WARPS_N, "a thread block is the warps of the tile");

struct MmqStage {              // one stage's global loads, held in registers until the stage before is done
    int4 x[MMQ_X_PER_THREAD];
    float2 xd[MMQ_XD_PER_THREAD];
    int w[MMQ_W_PER_THREAD][8];
    float wd[MMQ_W_PER_THREAD];
};

// The weight part of a stage: the Q8_0 blocks [b0, b0 + MMQ_KB) of rows n0.. (zeros past N and b_end), their quants
// as words and their scales.
__device__ __forceinline__ void mmq_load_w(int (*w)[8], float* wd, const u8* __restrict__ W, i64 row_bytes, int n0,
                                           int b0, int b_end, int N) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < MMQ_W_PER_THREAD; ++r) {
        const int e = tid + r * MMQ_THREADS, row = e / MMQ_KB, j = e % MMQ_KB;
        const int n = n0 + row, b = b0 + j;
        if (n < N && b < b_end) {
            const u8* blk = W + (i64)n * row_bytes + (i64)b * 34;
            wd[r] = load_f16_a2(blk);
            load16_any(blk + 2, w[r]);
            load16_any(blk + 18, w[r] + 4);
        } else {
            wd[r] = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) w[r][i] = 0;
        }
    }
}

// Writes a stage's weight part into shared memory: ws[row][k] (int8), wds[row][j].
__device__ __forceinline__ void mmq_store_w(const int (*w)[8], const float* wd, i8 (*ws)[MMQ_ROW],
                                            float (*wds)[MMQ_KB]) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < MMQ_W_PER_THREAD; ++r) {
        const int e = tid + r * MMQ_THREADS, row = e / MMQ_KB, j = e % MMQ_KB;
        int4 lo, hi;
        lo.x = w[r][0]; lo.y = w[r][1]; lo.z = w[r][2]; lo.w = w[r][3];
        hi.x = w[r][4]; hi.y = w[r][5]; hi.z = w[r][6]; hi.w = w[r][7];
        *(int4*)&ws[row][32 * j] = lo;
        *(int4*)&ws[row][32 * j + 16] = hi;
        wds[row][j] = wd[r];
    }
}

// Loads the stage of k blocks [b0, b0 + MMQ_KB) of this block's tile (zeros outside T, N and the block's k range,
// which ends at block b_end; nb: the row's blocks).
__device__ __forceinline__ void mmq_load(MmqStage& s, const u8* __restrict__ W, i64 row_bytes,
                                         const i8* __restrict__ xq, const float4* __restrict__ xds, i64 term_stride,
                                         int t0, int n0, int b0, int b_end, int T, int N, int nb, int terms) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < MMQ_X_PER_THREAD; ++r) {
        const int c = tid + r * MMQ_THREADS;          // term, row, 16-byte part: part fastest (coalesced rows)
        const int part = c % (MMQ_KB * 2), row = (c / (MMQ_KB * 2)) % MMQ_BM, term = c / (MMQ_KB * 2 * MMQ_BM);
        const int t = t0 + row, b = b0 + part / 2;
        int4 v;
        v.x = v.y = v.z = v.w = 0;
        if (t < T && b < b_end && term < terms)
            v = __ldg((const int4*)(xq + term * term_stride + (i64)t * (nb * 32) + 32 * b + 16 * (part % 2)));
        s.x[r] = v;
    }
#pragma unroll
    for (int r = 0; r < MMQ_XD_PER_THREAD; ++r) {
        const int e = tid + r * MMQ_THREADS, row = e / MMQ_KB, j = e % MMQ_KB;
        const int t = t0 + row, b = b0 + j;
        float2 d;
        d.x = d.y = 0.0f;
        if (t < T && b < b_end) {
            const float4 ds = xds[(i64)t * nb + b];
            d.x = ds.x;
            d.y = terms > 1 ? ds.y : 0.0f;
        }
        s.xd[r] = d;
    }
    mmq_load_w(s.w, s.wd, W, row_bytes, n0, b0, b_end, N);
}

// Writes a loaded stage into shared memory: xs[term][row][k], ws[row][k] (int8), xd[row][j], wd[row][j].
__device__ __forceinline__ void mmq_store(const MmqStage& s, i8 (*xs)[MMQ_BM][MMQ_ROW], i8 (*ws)[MMQ_ROW],
                                          float2 (*xd)[MMQ_KB], float (*wd)[MMQ_KB]) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < MMQ_X_PER_THREAD; ++r) {
        const int c = tid + r * MMQ_THREADS;
        const int part = c % (MMQ_KB * 2), row = (c / (MMQ_KB * 2)) % MMQ_BM, term = c / (MMQ_KB * 2 * MMQ_BM);
        *(int4*)&xs[term][row][16 * part] = s.x[r];
    }
#pragma unroll
    for (int r = 0; r < MMQ_XD_PER_THREAD; ++r) {
        const int e = tid + r * MMQ_THREADS;
        xd[e / MMQ_KB][e % MMQ_KB] = s.xd[r];
    }
    mmq_store_w(s.w, s.wd, ws, wd);
}

// Block z's run of 32-value k blocks [b_begin, b_end) when a tile's stages are split over `splits` blocks (equal runs
// of whole stages; the last runs may be short or empty).
__device__ __forceinline__ void mmq_split_run(int nb, int splits, int& b_begin, int& b_end) {
    const int stages = (nb + MMQ_KB - 1) / MMQ_KB, run = (stages + splits - 1) / splits;
    b_begin = min(nb, (int)blockIdx.z * run * MMQ_KB);
    b_end = min(nb, b_begin + run * MMQ_KB);
}

// A warp's outputs (rows r0 + 16 mi + g (+ 8), columns c0 + 8 ni + 2q (+ 1)): y = residual + (acc + bias), or, for a
// split product, the block's partial sums (mmq_sum_splits adds them).
__device__ __forceinline__ void mmq_write_tile(const float (&acc)[MMQ_MI][MMQ_NI][4], int r0, int c0, int g, int q,
                                               const float* __restrict__ bias, const float* residual, float* y, int T,
                                               int N, float* __restrict__ partials, int splits) {
#pragma unroll
    for (int mi = 0; mi < MMQ_MI; ++mi) {
#pragma unroll
        for (int ni = 0; ni < MMQ_NI; ++ni) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int t = r0 + 16 * mi + g + 8 * (i >> 1), n = c0 + 8 * ni + 2 * q + (i & 1);
                if (t < T && n < N) {
                    const i64 at = (i64)t * N + n;
                    float v = acc[mi][ni][i];
                    if (splits > 1) {
                        partials[(i64)blockIdx.z * T * N + at] = v;
                    } else {
                        if (bias) v += bias[n];
                        y[at] = residual ? residual[at] + v : v;
                    }
                }
            }
        }
    }
}

// y[t, n] = sum_k x[t, k] W[n, k] (+ bias[n]) (+ residual[t, n]) for x as int8 terms xq [terms][T][K] (term
// stride term_stride) with scales xds [T][K/32] (d0, d1, s, 0), W [N] rows of K/32 Q8_0 blocks row_bytes apart.
// Grid (ceil(N / MMQ_BN), ceil(T / MMQ_BM), splits), MMQ_THREADS threads. residual may be y itself (each output is
// read, then written, by one thread). splits > 1 (a grid too small to fill the GPU): block z takes the z-th of
// `splits` equal runs of the k stages and writes its sums to partials [splits][T][N] (zeros for an empty run),
// which mmq_sum_splits adds in split order, then bias and residual.
extern "C" __global__ void __launch_bounds__(MMQ_THREADS, 2) mmq_q8_0(
        const u8* __restrict__ W, i64 row_bytes, const i8* __restrict__ xq, const float4* __restrict__ xds,
        i64 term_stride, const float* __restrict__ bias, const float* residual, float* y,
        int T, int N, int K, int terms, float* __restrict__ partials, int splits) {
    __shared__ __align__(16) i8 xs[2][MMQ_BM][MMQ_ROW];
    __shared__ __align__(16) i8 ws[MMQ_BN][MMQ_ROW];
    __shared__ float2 xd[MMQ_BM][MMQ_KB];
    __shared__ float wd[MMQ_BN][MMQ_KB];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int n0 = blockIdx.x * MMQ_BN, t0 = blockIdx.y * MMQ_BM;
    const int wm = 16 * MMQ_MI * (warp / MMQ_WARPS_N);        // the warp's first row of the tile: tokens
    const int wn = 8 * MMQ_NI * (warp % MMQ_WARPS_N);         // and weights
    const int nb = K >> 5;
    int b_begin, b_end;
    mmq_split_run(nb, splits, b_begin, b_end);
    float acc[MMQ_MI][MMQ_NI][4] = {};
    MmqStage stage;
    if (b_begin < b_end) mmq_load(stage, W, row_bytes, xq, xds, term_stride, t0, n0, b_begin, b_end, T, N, nb, terms);
    for (int b0 = b_begin; b0 < b_end; b0 += MMQ_KB) {
        __syncthreads();                              // the stage before is no longer read
        mmq_store(stage, xs, ws, xd, wd);
        __syncthreads();
        if (b0 + MMQ_KB < b_end)                      // the next stage's loads, in flight during the products
            mmq_load(stage, W, row_bytes, xq, xds, term_stride, t0, n0, b0 + MMQ_KB, b_end, T, N, nb, terms);
        const int blocks = min(MMQ_KB, b_end - b0);   // the last stage may hold fewer
#pragma unroll 1
        for (int j = 0; j < blocks; ++j) {
            const int k = 32 * j + 4 * q;
            u32 bw[MMQ_NI][2];
            float sw[MMQ_NI][2];                      // weight scales of this lane's columns 2q, 2q + 1
#pragma unroll
            for (int ni = 0; ni < MMQ_NI; ++ni) {
                const i8* wrow = ws[wn + 8 * ni + g];
                bw[ni][0] = *(const u32*)(wrow + k);
                bw[ni][1] = *(const u32*)(wrow + k + 16);
                sw[ni][0] = wd[wn + 8 * ni + 2 * q][j];
                sw[ni][1] = wd[wn + 8 * ni + 2 * q + 1][j];
            }
#pragma unroll
            for (int mi = 0; mi < MMQ_MI; ++mi) {
                const int r0 = wm + 16 * mi + g;      // this lane's rows r0 and r0 + 8
                const float2 d_lo = xd[r0][j], d_hi = xd[r0 + 8][j];
                int s[2][MMQ_NI][4];                  // [term][ni][fragment]: exact int32 block sums
#pragma unroll
                for (int term = 0; term < 2; ++term) {
#pragma unroll
                    for (int ni = 0; ni < MMQ_NI; ++ni)
#pragma unroll
                        for (int i = 0; i < 4; ++i) s[term][ni][i] = 0;
                    if (term >= terms) continue;      // uniform over the block
                    u32 a[4];
                    a[0] = *(const u32*)(&xs[term][r0][k]);
                    a[1] = *(const u32*)(&xs[term][r0 + 8][k]);
                    a[2] = *(const u32*)(&xs[term][r0][k + 16]);
                    a[3] = *(const u32*)(&xs[term][r0 + 8][k + 16]);
#pragma unroll
                    for (int ni = 0; ni < MMQ_NI; ++ni) mma_s8_16x8x32(s[term][ni], a, bw[ni]);
                }
#pragma unroll
                for (int ni = 0; ni < MMQ_NI; ++ni) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) {     // fragment i: row r0 + 8 (i >> 1), column 2q + (i & 1)
                        const float2 d = i < 2 ? d_lo : d_hi;
                        const float v = fmaf(d.y, mmq_exact_float(s[1][ni][i]), d.x * mmq_exact_float(s[0][ni][i]));
                        acc[mi][ni][i] = fmaf(sw[ni][i & 1], v, acc[mi][ni][i]);
                    }
                }
            }
        }
    }
    mmq_write_tile(acc, t0 + wm, n0 + wn, g, q, bias, residual, y, T, N, partials, splits);
}

// ---- mmq_bf16_q8_0 (M0_CUDA_PREFILL_Q8=bf16): mmq_q8_0's tiles, stages and split runs on BF16 tensor cores ----
// The activations are read as float32 and split as they are staged into two bfloat16 terms (x = hi + lo within
// 2^-18 |x|: mma_bf16.cuh's bf16_split_bits); each weight quant is an exact bfloat16 value (|q| <= 128: at most
// eight significant bits). A 32-value block's sum over both of its k16 halves and both terms is float32 (each
// product exact) and is scaled by the block's d alone: acc += d_w[n, b] S. So no activation scales and no
// conversion of integer sums: one FFMA an output a block where mmq_q8_0 spends seven, for twice its mma
// instructions; and no quantize_q8 launch before it. Error: the bfloat16 split's (row matmul_bf16x2, as the grouped
// expert products on BF16, 2.5e-11 term-normalized), below the int8 terms' (matmul_q8x2, 1e-8).
// Shared memory: each term's staged rows MMB_ROW words (MMQ_KB 32-value blocks as bfloat16 pairs, 4 words of
// padding: the words q of rows g of a fragment load fall in 32 banks), 34 KB, beside mmq_q8_0's weight stage.
#define MMB_ROW (MMQ_KB * 16 + 4)
#define MMB_X_VECS (MMQ_BM * MMQ_KB * 8 / MMQ_THREADS)    // float4s of a stage's activations a thread
static_assert(MMB_X_VECS * MMQ_THREADS == MMQ_BM * MMQ_KB * 8, "a stage's activations: whole float4s a thread");

struct MmbStage {
    float4 x[MMB_X_VECS];
    int w[MMQ_W_PER_THREAD][8];
    float wd[MMQ_W_PER_THREAD];
};

// Two int8 values (bytes 0 and 1 of `two`) as a bfloat16 pair, exactly: each becomes a float by the 1.5 * 2^23
// trick (no int-to-float conversion) and keeps its upper half (|q| <= 128 fits bfloat16's eight bits).
__device__ __forceinline__ u32 mmb_s8x2_bf16x2(u32 two) {
    const int v0 = (int)(signed char)(two & 0xffu), v1 = (int)(signed char)((two >> 8) & 0xffu);
    return bf16_pack(__float_as_uint(mmq_exact_float(v0)), __float_as_uint(mmq_exact_float(v1)));
}

__device__ __forceinline__ void mmb_load(MmbStage& s, const u8* __restrict__ W, i64 row_bytes,
                                         const float* __restrict__ x, int t0, int n0, int b0, int b_end, int T,
                                         int N, int K) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < MMB_X_VECS; ++r) {
        const int c = tid + r * MMQ_THREADS;          // row, float4: float4 fastest (coalesced rows)
        const int v = c % (MMQ_KB * 8), row = c / (MMQ_KB * 8);
        const int t = t0 + row, b = b0 + v / 8;
        float4 val = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (t < T && b < b_end) val = *(const float4*)(x + (i64)t * K + 32 * b0 + 4 * v);
        s.x[r] = val;
    }
    mmq_load_w(s.w, s.wd, W, row_bytes, n0, b0, b_end, N);
}

// Writes a loaded stage: xs[term][row][word] (bfloat16 pairs, the lower k in the low half), ws, wds.
__device__ __forceinline__ void mmb_store(const MmbStage& s, u32 (*xs)[MMQ_BM][MMB_ROW], i8 (*ws)[MMQ_ROW],
                                          float (*wds)[MMQ_KB]) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int r = 0; r < MMB_X_VECS; ++r) {
        const int c = tid + r * MMQ_THREADS;
        const int v = c % (MMQ_KB * 8), row = c / (MMQ_KB * 8);
        const float4 x4 = s.x[r];
        u32 h[4], l[4];
        bf16_split_bits(x4.x, h[0], l[0]);
        bf16_split_bits(x4.y, h[1], l[1]);
        bf16_split_bits(x4.z, h[2], l[2]);
        bf16_split_bits(x4.w, h[3], l[3]);
        *(uint2*)&xs[0][row][2 * v] = make_uint2(bf16_pack(h[0], h[1]), bf16_pack(h[2], h[3]));
        *(uint2*)&xs[1][row][2 * v] = make_uint2(bf16_pack(l[0], l[1]), bf16_pack(l[2], l[3]));
    }
    mmq_store_w(s.w, s.wd, ws, wds);
}

// y = x W^T (+ bias) (+ residual) as mmq_q8_0 computes it (grid, splits, partials alike), x float32 [T][K].
extern "C" __global__ void __launch_bounds__(MMQ_THREADS, 2) mmq_bf16_q8_0(
        const u8* __restrict__ W, i64 row_bytes, const float* __restrict__ x, const float* __restrict__ bias,
        const float* residual, float* y, int T, int N, int K, float* __restrict__ partials, int splits) {
    __shared__ __align__(16) u32 xs[2][MMQ_BM][MMB_ROW];
    __shared__ __align__(16) i8 ws[MMQ_BN][MMQ_ROW];
    __shared__ float wd[MMQ_BN][MMQ_KB];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, q = lane & 3;
    const int n0 = blockIdx.x * MMQ_BN, t0 = blockIdx.y * MMQ_BM;
    const int wm = 16 * MMQ_MI * (warp / MMQ_WARPS_N);
    const int wn = 8 * MMQ_NI * (warp % MMQ_WARPS_N);
    const int nb = K >> 5;
    int b_begin, b_end;
    mmq_split_run(nb, splits, b_begin, b_end);
    float acc[MMQ_MI][MMQ_NI][4] = {};
    MmbStage stage;
    if (b_begin < b_end) mmb_load(stage, W, row_bytes, x, t0, n0, b_begin, b_end, T, N, K);
    for (int b0 = b_begin; b0 < b_end; b0 += MMQ_KB) {
        __syncthreads();                              // the stage before is no longer read
        mmb_store(stage, xs, ws, wd);
        __syncthreads();
        if (b0 + MMQ_KB < b_end)                      // the next stage's loads, in flight during the products
            mmb_load(stage, W, row_bytes, x, t0, n0, b0 + MMQ_KB, b_end, T, N, K);
        const int blocks = min(MMQ_KB, b_end - b0);
#pragma unroll 1
        for (int j = 0; j < blocks; ++j) {
            u32 bw[MMQ_NI][2][2];                     // [n8 tile][k16 half][fragment register]
            float sw[MMQ_NI][2];                      // the block's scales of this lane's columns 2q, 2q + 1
#pragma unroll
            for (int ni = 0; ni < MMQ_NI; ++ni) {
                const i8* wrow = ws[wn + 8 * ni + g] + 32 * j + 2 * q;
#pragma unroll
                for (int h = 0; h < 2; ++h) {         // B[k][g] for k = 16h + 2q, + 1 and 16h + 2q + 8, + 9
                    bw[ni][h][0] = mmb_s8x2_bf16x2(*(const u16*)(wrow + 16 * h));
                    bw[ni][h][1] = mmb_s8x2_bf16x2(*(const u16*)(wrow + 16 * h + 8));
                }
                sw[ni][0] = wd[wn + 8 * ni + 2 * q][j];
                sw[ni][1] = wd[wn + 8 * ni + 2 * q + 1][j];
            }
#pragma unroll
            for (int mi = 0; mi < MMQ_MI; ++mi) {
                const int r0 = wm + 16 * mi + g;      // this lane's rows r0 and r0 + 8
                float sums[MMQ_NI][4] = {};           // the block's float32 sums, both halves and terms
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int kw = 16 * j + 8 * h + q;
#pragma unroll
                    for (int term = 1; term >= 0; --term) {   // the small term first
                        const u32 a[4] = {xs[term][r0][kw], xs[term][r0 + 8][kw], xs[term][r0][kw + 4],
                                          xs[term][r0 + 8][kw + 4]};
#pragma unroll
                        for (int ni = 0; ni < MMQ_NI; ++ni) mma_bf16_16x8x16(sums[ni], a, bw[ni][h]);
                    }
                }
#pragma unroll
                for (int ni = 0; ni < MMQ_NI; ++ni)
#pragma unroll
                    for (int i = 0; i < 4; ++i) acc[mi][ni][i] = fmaf(sw[ni][i & 1], sums[ni][i], acc[mi][ni][i]);
            }
        }
    }
    mmq_write_tile(acc, t0 + wm, n0 + wn, g, q, bias, residual, y, T, N, partials, splits);
}

// y[t, n] = residual[t, n] + (sum over s of partials[s][t, n] in order + bias[n]) (either NULL: left out), the
// epilogue of a split mmq_<fmt>: a grid-stride loop over the T N outputs.
extern "C" __global__ void mmq_sum_splits(const float* __restrict__ partials, int splits,
                                          const float* __restrict__ bias, const float* residual, float* y, int T,
                                          int N) {
    const i64 n_out = (i64)T * N;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n_out; i += (i64)gridDim.x * blockDim.x) {
        float v = partials[i];
        for (int s = 1; s < splits; ++s) v += partials[(i64)s * n_out + i];
        if (bias) v += bias[i % N];
        y[i] = residual ? residual[i] + v : v;
    }
}
