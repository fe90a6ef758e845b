// Grouped expert products of a GPT-OSS prefill (T >= 2 tokens) on tensor cores.
//
// moe.cu's moe_plan sorts the (token, slot) pairs by expert and cuts each expert's run into tiles of
// tile_rows (16, 32 or 64) sorted rows. A block takes one tile and MOE_BN output columns: it gathers the tile's rows of
// the input, stages the expert's weight blocks as stored, dequantizes them on the fly (quant.cuh) and multiplies
// with mma.sync. The variants (kernels/moe.py MOE_GEMM_VARIANT):
//   v3: TF32 (mma_tf32.cuh) in the prefill products' split-TF32 scheme (kernels/matmul.py): every activation
//       x = x_hi + x_lo, and y = x_hi W + x_lo W where each weight value is a TF32 value already (MXFP4), else
//       y = x_hi W_hi + x_hi W_lo + x_lo W_hi; each term x_k W_nk is then off by at most 2^-21 |x_k| |W_nk|.
//   v4: BF16 (mma_bf16.cuh) for the formats whose values are bfloat16 values (MXFP4): x = x_hi + x_lo in
//       bfloat16 (within 2^-18 |x|), y = x_hi W + x_lo W, half the products of v3's terms a k-step.
//   v5: int8 (mma_s8.cuh, m16n8k32) for MXFP4, as llama.cpp's mmq: the weights' E2M1 codes as int8 values
//       (doubled: 0, 1, 2, 3, 4, 6, 8, 12 and negatives, exact) with the block's scale halved, the activations
//       quantized a 32-value block as vecdot.cuh's two int8 terms (x = d0 q0 + d1 q1 within max|block| / 64516),
//       each term's exact int32 block sum scaled by d_t and the weight block's scale in float32: two products
//       a 32-value k-step and 16 x 8 outputs where v4 needs four. Its activations are double-buffered (one
//       __syncthreads a step) and its weight blocks copied by cp.async two k-steps ahead (three stages).
//   v6: v4 with two 32-value blocks a k-step (34 contiguous bytes of a weight row a staged slot): half the steps and
//       their barriers, twice the bytes in flight a step.
//   v7: v6 with MXFP4's bfloat16 values built from the codes' bits (moe_mxfp4_bf16_words), not through float32,
//       each staged block's scale factors made once (moe_mxfp4_scale_words), the activations in fragment order
//       (moe_frag_word).
//   v8: v7 with the down product's blocks 256 columns wide (two 128-column halves: each k-step's activation rows,
//       barriers and load waits serve twice the columns, half the blocks); gate/up is v7's.
// The sums are float32, as the prefill products'.
//   moe_gate_up_<variant>_<fmt>: h[row] = swiglu(x[token(row)] Wgate_e^T + bgate_e, x[token(row)] Wup_e^T + bup_e)
//   moe_down_<variant>_<fmt>:    y[row] = h[row] Wdown_e^T + bdown_e
// (v4 to v7: moe_gate_up_<variant>_r<rows>_<fmt>, a kernel a tile height; v3's take the height as an argument)
// Tiles with rows = 0 (the plan's unused entries) exit at once. (v1, one unpipelined k-step at a time, and v2, v3
// with the activations split by every warp that reads them, were slower at every size on the H200 and are gone.)
#include "quant.cuh"
#include "tf32.cuh"
#include "activation.cuh"
#include "mma_tf32.cuh"
#include "mma_bf16.cuh"
#include "mma_s8.cuh"
#include "cp_async.cuh"
#include "vecdot.cuh"

#define MOE_BM 64        // the most sorted rows (token-expert pairs) a tile: kernels/moe.py MOE_TILE_ROWS
#define MOE_BK 32        // k values a step: one 32-value block of every format but the K-quants

__device__ __forceinline__ void split_bits(float v, u32& hi, u32& lo) {
    float h, l;
    tf32_split(v, h, l);
    hi = __float_as_uint(h);
    lo = __float_as_uint(l);
}

// The formats with grouped kernels (kernels/moe.py MOE_GEMM_FORMATS) and whether each value is a TF32
// value already (kernels/matmul.py TF32_EXACT_FORMATS).
#define FOR_EACH_MOE_FORMAT(X) \
    X(q4_0, false) X(q4_1, false) X(q5_0, false) X(q8_0, false) X(mxfp4, true) X(q4_k, false) X(q5_k, false) \
    X(q6_k, false)

#define DEFINE_MOE_DQ(fmt, exact)                                                                            \
struct moe_dq_##fmt {                                                                                        \
    static constexpr bool is_mxfp4 = #fmt[0] == 'm';                                                         \
    __device__ static __forceinline__ void dq8(const u8* r, int c, float* w) { dq8_##fmt(r, c, w); }        \
};
FOR_EACH_MOE_FORMAT(DEFINE_MOE_DQ)

// ---- The tile: 8 warps a block, 128 output columns, each warp 16 or 32 of the tile's rows and 128 / WARPS_N columns
// of each weight. The next k-step's activation float4s and raw weight bytes are loaded into registers before the
// current step's products and stored after them, so the loads' latency runs behind the tensor cores. The weights are
// staged as their stored 32-value blocks (a 17..34 byte copy a row, not 32 floats; double-buffered), each warp
// dequantizing the block of its fragment's column; the K-quants (256-value blocks, a 32-value part's bytes not
// contiguous) are read from global memory by the fragment instead. The activations are split once, as they are
// stored (a[0] the high parts, a[1] the low ones, one buffer, hence two __syncthreads a step; v4 keeps them as
// bfloat16 pairs in the same space), not by each of the 2 to 8 warps that read them.
// The k order inside a 32-value step is permuted, the same for both operands (a sum does not depend on it): lane
// (g, q)'s k = q and q + 4 of step s in 0..3 are the physical k = 8q + s and 8q + 4 + s, so a lane's activations of
// the whole step are two float4 loads a row and its weight values one dq8 call (values 8q .. 8q + 7 of the block).
#define MOE_BN 128         // output columns a block: kernels/moe.py MOE_TILE_COLS
#define MOE_THREADS 256    // 8 warps: kernels/moe.py MOE_THREADS
#define MOE_LDS 36         // floats a staged activation row: the float4 fragment reads of 8 lanes hit 32 banks
#define MOE_RAW 36         // bytes a staged weight block (the largest 32-value block, Q8_0's, is 34)
#define MOE_RAW_WORDS 9    // MOE_RAW / 4

// Formats whose blocks hold 256 values (Q4_K, Q5_K, Q6_K): not staged.
__device__ constexpr bool moe_superblock_format(const char* f) { return f[2] == '_' && f[3] == 'k'; }

struct MoeShared {
    float a[2][MOE_BM][MOE_LDS];         // the tile's input rows of the k-step: high parts, low parts
    u8 raw[2][2 * MOE_BN][MOE_RAW];      // the weights' stored blocks: row m * 128 + c is column n0 + c of weight m
    uint4 scales[2][2 * MOE_BN];         // v7: each staged slot's two blocks' moe_mxfp4_scale_words
    int src_row[MOE_BM];
};

// A weight's values 8c .. 8c + 7 (quant.cuh's dq8). MXFP4's from a staged block (4-byte aligned shared memory,
// c in 0..3) with word loads and without dq8_mxfp4's value table (an indexed local array lives in local memory):
// the doubled E2M1 magnitudes 0, 1, 2, 3, 4, 6, 8, 12 picked from two registers by __byte_perm, the sign applied
// to the integer, which becomes a float exactly by the 1.5 * 2^23 trick (no int-to-float conversion): the
// table's values, times the same scale.
// OFF: the block's byte in the staged slot (v6 stages two MXFP4 blocks a slot, the second at MOE_MXFP4_BYTES).
#define MOE_MXFP4_BYTES 17       // an MXFP4 block: its e8m0 scale and 16 bytes of E2M1 codes
template <class DQ, int OFF = 0>
struct MoeDq8 {
    __device__ static __forceinline__ void at(const u8* r, int c, float* w) { DQ::dq8(r + OFF, c, w); }
};

template <int OFF>
struct MoeDq8<moe_dq_mxfp4, OFF> {
    __device__ static __forceinline__ void at(const u8* r, int c, float* w) {
        const u32* words = (const u32*)r;
        const float s = e8m0_half((words[OFF / 4] >> (8 * (OFF % 4))) & 0xffu);
        // qs[8 (c & 1) + i] is the slot's byte OFF + 1 + 8 (c & 1) + i
        constexpr int Q0 = (OFF + 1) / 4, SHIFT = 8 * ((OFF + 1) % 4);
        const int h = Q0 + (c & 1) * 2;
        const u32 w0 = words[h], w1 = words[h + 1], w2 = words[h + 2];
        const u32 lo = __funnelshift_r(w0, w1, SHIFT), hi = __funnelshift_r(w1, w2, SHIFT);
        const int shift = (c >> 1) * 4;              // values 16..31 are the high nibbles
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const u32 code = ((i < 4 ? lo : hi) >> (8 * (i & 3) + shift)) & 15u;
            const int mag = (int)__byte_perm(0x03020100u, 0x0C080604u, code & 7u);
            const int v = (code & 8u) ? -mag : mag;
            w[i] = s * (__int_as_float(0x4B400000 + v) - 12582912.0f);
        }
    }
};

template <class DQ, int OFF = 0>
__device__ __forceinline__ void moe_dq8(const u8* r, int c, float* w) { MoeDq8<DQ, OFF>::at(r, c, w); }

// v7: lane q's eight values of a staged MXFP4 block as four bfloat16 pairs built from the codes' bits, without
// float32 values on the way (a third of moe_dq8's instructions): a code s e1 e0 m placed as bfloat16 bits, s at 15
// and e1 e0 m at 8..6, is its E2M1 value times 2^-126 (e1 e0 = 0: a subnormal, m x 2^-127), so exact bfloat16
// multiplies by the block's scale words (moe_mxfp4_scale_words: 2^(e8 - 1) in two factors) give the value times
// the block's scale 2^(e8 - 127). The same bfloat16 values as moe_dq8's, so v7's products are v6's. The lane's
// word of codes, bytes 4q .. 4q + 3 (values 4q .. 4q + 3 in the low nibbles, 4q + 16 .. 4q + 19 in the high ones),
// gives pairs from nibbles p and p + 16: w[i] holds k = 4q + i % 2 + 16 (i / 2) and that k + 2 (low half first),
// the order stage_a writes v7's activation rows in.
// OFF: the block's byte in the staged slot (4-byte aligned shared memory), as moe_dq8's; scale: the block's
// moe_mxfp4_scale_words, made once where the block is staged rather than by each of the lanes that read it.
template <int OFF>
__device__ __forceinline__ void moe_mxfp4_bf16_words(const u8* r, int q, uint2 scale, u32* w) {
    const u32* words = (const u32*)r;
    constexpr int Q0 = (OFF + 1) / 4, SHIFT = 8 * ((OFF + 1) % 4);   // the codes after the scale byte
    const u32 codes = __funnelshift_r(words[Q0 + q], words[Q0 + q + 1], SHIFT);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int p = 8 * (i & 1) + 4 * (i >> 1);
        const u32 a = codes << (12 - p);         // the sign bits at 15 and 31
        const u32 v = (a & 0x80008000u) | ((a >> 6) & 0x01C001C0u);
        w[i] = bf16x2_mul(bf16x2_mul(v, scale.x), scale.y);
    }
}

// An MXFP4 block's scale byte e8 as the two bfloat16x2 factors of 2^(e8 - 1) that moe_mxfp4_bf16_words multiplies
// by: 2^(e8 - 1) and 1, or 2^127 and 2^(e8 - 128) where 2^(e8 - 1) is past bfloat16's range (e8 > 128). Both
// multiplies are exact (a power of two; bfloat16 arithmetic keeps subnormals).
__device__ __forceinline__ uint2 moe_mxfp4_scale_words(u32 e8) {
    const bool past = e8 > 128u;
    const u32 s1 = (past ? 254u : e8 + 126u) << 7, s2 = past ? (e8 - 1u) << 7 : 0x3F80u;
    return make_uint2(s1 | (s1 << 16), s2 | (s2 << 16));
}

// v7's activation words of a 32-value block in fragment order: the A fragment of lane L (4g + q) for the step's
// product s (k 16s .. 16s + 15) of row tile mt is the four words {row g's pair 0, row g + 8's pair 0, row g's pair
// 1, row g + 8's pair 1} (mma.sync m16n8k16's a0..a3), stored together, the 32 lanes' fragments of (mt, s) one
// after the other: one conflict-free 16-byte read a fragment and no register moves to assemble it (v6's row-major
// words needed four moves an mma: ncu counted 63 M of the gate/up launch's 276 M instructions at T = 128).
// Returns the first word's index in the block's buffer (BM * 16 words, as v6's).
__device__ __forceinline__ int moe_frag_word(int mt, int s, int lane) { return ((mt * 2 + s) * 32 + lane) * 4; }

// One 32-value k-step of v4 on BF16 tensor cores (m16n8k16, two a step): the weights' values are bfloat16
// values already (MXFP4's: E2M1 times a power of two), the activations two bfloat16 terms each (high, low:
// within 2^-18 of the value). The k order is v3's: lane (g, q) holds values 8q .. 8q + 7 of its rows and column,
// the first four for the first product (logical k 2q, 2q + 1, 2q + 8, 2q + 9), the last four for the second; the
// same permutation for both operands leaves each dot product's terms unchanged. a_bf16: the step's activations,
// 16 words a row (a lane's eight values are one 16-byte read; 8 lanes of a quarter warp cover 32 banks).
// WORDS (v7): the weight values' bfloat16 pairs built from MXFP4's codes (moe_mxfp4_bf16_words), not through moe_dq8,
// and the activations staged in fragment order (moe_frag_word).
// scales (WORDS): the staged slots' moe_mxfp4_scale_words, a uint4 a slot (its first block's, then its second's).
template <class DQ, int NMAT, int MT, int NT, int OFF, bool WORDS = false>
__device__ __forceinline__ void moe_bf16_step(const u8 (*raw)[MOE_RAW], const uint4* scales, u32* const* a_bf16,
                                              int wm, int wn, int g, int q, float (*acc)[MT][NT][4]) {
    u32 a[2][MT][2][4];                          // [low, high][m16 tile][product of the step][fragment]
#pragma unroll
    for (int part = 0; part < 2; ++part)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            if constexpr (WORDS) {               // fragment order (moe_frag_word): one 16-byte read a fragment
#pragma unroll
                for (int s = 0; s < 2; ++s) {
                    const uint4 f = *(const uint4*)&a_bf16[part ? 0 : 1][moe_frag_word(wm / 16 + mt, s, 4 * g + q)];
                    a[part][mt][s][0] = f.x;
                    a[part][mt][s][1] = f.y;
                    a[part][mt][s][2] = f.z;
                    a[part][mt][s][3] = f.w;
                }
                continue;
            }
            const uint4 r0 = *(const uint4*)&a_bf16[part ? 0 : 1][(wm + 16 * mt + g) * 16 + 4 * q];
            const uint4 r1 = *(const uint4*)&a_bf16[part ? 0 : 1][(wm + 16 * mt + g + 8) * 16 + 4 * q];
            const u32 w0[4] = {r0.x, r0.y, r0.z, r0.w}, w1[4] = {r1.x, r1.y, r1.z, r1.w};
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                a[part][mt][s][0] = w0[2 * s];
                a[part][mt][s][1] = w1[2 * s];
                a[part][mt][s][2] = w0[2 * s + 1];
                a[part][mt][s][3] = w1[2 * s + 1];
            }
        }
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            u32 words[4];                        // the lane's weight values as bfloat16 pairs
            const int slot = m * MOE_BN + wn + 8 * nt + g;
            const u8* r = &raw[slot][0];
            if constexpr (WORDS) {
                static_assert(DQ::is_mxfp4, "v7 builds MXFP4's bfloat16 values alone");
                const uint2 scale = ((const uint2*)&scales[slot])[OFF ? 1 : 0];
                moe_mxfp4_bf16_words<OFF>(r, q, scale, words);
            } else {
                float w[8];
                moe_dq8<DQ, OFF>(r, q, w);
#pragma unroll
                for (int i = 0; i < 4; ++i) words[i] = bf16_pack(__float_as_uint(w[2 * i]), __float_as_uint(w[2 * i + 1]));
            }
#pragma unroll
            for (int s = 0; s < 2; ++s) {
                const u32 b[2] = {words[2 * s], words[2 * s + 1]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma_bf16_16x8x16(acc[m][mt][nt], a[0][mt][s], b);   // the small term first
                    mma_bf16_16x8x16(acc[m][mt][nt], a[1][mt][s], b);
                }
            }
        }
}

// ---- v5: the activations of a k-step as two int8 terms, 16 words a row and buffer: term t's bytes 4j .. 4j + 3
// (word j of the term, j in 0..7) at word 4 (j % 4) + 2 t + j / 4, so that lane q's one 16-byte read holds the
// words j = q and q + 4 of both terms, its A fragments' k = 4q .. 4q + 3 and 4q + 16 .. 4q + 19 (8 lanes of a
// quarter warp read two rows: 32 banks); their scales (d0, d1) a row after them; two buffers (a[0]'s space).
// The weight blocks come by cp.async two k-steps ahead, into three stages (sm.raw's two and a[1]'s space): the
// aligned words that hold a block (a row of 17-byte blocks is not aligned), the block's offset in its slot in
// the slot's byte MOE_S8_SHIFT (written by the thread that copies it).
#define MOE_S8_WORDS 16
#define MOE_S8_COPY_WORDS 5     // words that hold a 17-byte MXFP4 block at any offset (3 + 17 <= 20 bytes)
#define MOE_S8_SHIFT 35         // the last byte of a MOE_RAW-byte slot
static_assert(4 * MOE_S8_COPY_WORDS <= MOE_S8_SHIFT, "the copied words leave the slot's offset byte alone");
__device__ __forceinline__ int moe_s8_slot(int j, int term) { return 4 * (j & 3) + 2 * term + (j >> 2); }

__device__ __forceinline__ u32 moe_s8_pack(const float* q) {
    return ((u32)(int)q[0] & 0xffu) | (((u32)(int)q[1] & 0xffu) << 8) | (((u32)(int)q[2] & 0xffu) << 16)
           | ((u32)(int)q[3] << 24);
}

// Four of a 32-value block's values, the block spread over 8 consecutive lanes (lane % 8 holds values 4 (lane % 8)
// .. + 3), quantized as vecdot.cuh's quantize_block_warp does a block on 32 lanes (the same two terms: d0 = max|v|
// / 127, q0 = rint(v / d0), then the residual v - d0 q0 the same way): the four values' bytes of each term as one
// word, and the block's scales.
__device__ __forceinline__ void moe_s8_quantize4(const float4 x4, u32& w0, u32& w1, float2& ds) {
    const float v[4] = {x4.x, x4.y, x4.z, x4.w};
    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float d0 = amax / 127.0f;
    float q0[4], r[4], q1[4], rmax = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        q0[i] = d0 > 0.0f ? rintf(v[i] / d0) : 0.0f;
        r[i] = fmaf(-q0[i], d0, v[i]);
        rmax = fmaxf(rmax, fabsf(r[i]));
    }
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) rmax = fmaxf(rmax, __shfl_xor_sync(0xffffffffu, rmax, o));
    const float d1 = rmax / 127.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) q1[i] = d1 > 0.0f ? rintf(r[i] / d1) : 0.0f;
    w0 = moe_s8_pack(q0);
    w1 = moe_s8_pack(q1);
    ds = make_float2(d0, d1);
}

// An exact int32 sum as a float without an int-to-float conversion (|v| < 2^22: 32 products of |q| <= 127 and
// |w| <= 12 are at most 48768): the 1.5 * 2^23 trick of moe_dq8.
__device__ __forceinline__ float moe_s8_float(int v) { return __int_as_float(0x4B400000 + v) - 12582912.0f; }

// One 32-value k-step of v5 on int8 tensor cores (m16n8k32, one product a term): lane (g, q)'s B fragment is its
// column's codes 4q .. 4q + 3 (the low nibbles of the block's qs[4q .. 4q + 3]) and 4q + 16 .. 4q + 19 (their high
// nibbles): one word of the staged block (bytes 1 + 4q .. 4 + 4q) in the natural k order. Each output's two int32
// sums are scaled by its row's (d0, d1) and its column's weight scale (columns 2q and 2q + 1: their blocks' first
// bytes) and added to the float32 sums.
template <int NMAT, int MT, int NT>
__device__ __forceinline__ void moe_s8_step(const u8 (*raw)[MOE_RAW], const u32* a_s8, const float2* a_ds, int wm,
                                            int wn, int g, int q, float (*acc)[MT][NT][4]) {
    u32 a[MT][2][4];                             // [m16 tile][term][fragment]
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const int r = wm + 16 * mt + g;
        const uint4 r0 = *(const uint4*)&a_s8[r * MOE_S8_WORDS + 4 * q];
        const uint4 r1 = *(const uint4*)&a_s8[(r + 8) * MOE_S8_WORDS + 4 * q];
        a[mt][0][0] = r0.x; a[mt][0][1] = r1.x; a[mt][0][2] = r0.y; a[mt][0][3] = r1.y;
        a[mt][1][0] = r0.z; a[mt][1][1] = r1.z; a[mt][1][2] = r0.w; a[mt][1][3] = r1.w;
    }
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int c = m * MOE_BN + wn + 8 * nt;
            const u32* words = (const u32*)&raw[c + g][0];
            const int o = raw[c + g][MOE_S8_SHIFT] + 1 + 4 * q;          // the slot's byte of qs[4q]
            const u32 codes = __funnelshift_r(words[o >> 2], words[(o >> 2) + 1], (o & 3) * 8);
            const u32 b[2] = {(u32)fp4x4_doubled((int)(codes & 0x0F0F0F0Fu)),
                              (u32)fp4x4_doubled((int)((codes >> 4) & 0x0F0F0F0Fu))};
            const u8* e0 = raw[c + 2 * q];
            const u8* e1 = raw[c + 2 * q + 1];
            const float sw[2] = {e8m0_half(e0[e0[MOE_S8_SHIFT]]), e8m0_half(e1[e1[MOE_S8_SHIFT]])};
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                int s0[4] = {0, 0, 0, 0}, s1[4] = {0, 0, 0, 0};
                mma_s8_16x8x32(s1, a[mt][1], b);
                mma_s8_16x8x32(s0, a[mt][0], b);
                const float2 ds[2] = {a_ds[wm + 16 * mt + g], a_ds[wm + 16 * mt + g + 8]};   // rows g, g + 8
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float2 d = ds[i >> 1];
                    const float v = fmaf(d.y, moe_s8_float(s1[i]), d.x * moe_s8_float(s0[i]));
                    acc[m][mt][nt][i] = fmaf(sw[i & 1], v, acc[m][mt][nt][i]);
                }
            }
        }
}

// WIDE (v8's down product): MOE_BN columns more a block, taken as a second "weight" (NMAT = 2) that is the weight's
// next MOE_BN rows, so that each step's activations and barriers serve twice the columns, as gate/up's do.
template <class DQ, bool EXACT, bool GATE_UP, bool STAGED, bool BF16, bool S8, int BM, int WARPS_M, int KB = 1,
          bool WORDS = false, bool WIDE = false>
__device__ __forceinline__ void moe_tile(
        MoeShared& sm, const float* __restrict__ x, const int* __restrict__ order, int k_used,
        const int* __restrict__ tiles, const u8* __restrict__ W1, const u8* __restrict__ W2, i64 row_bytes,
        i64 expert_bytes, const float* __restrict__ b1, const float* __restrict__ b2, float* __restrict__ out,
        int N, int K, int clamped, int has_limit, float limit, float alpha) {
    constexpr int NMAT = GATE_UP || WIDE ? 2 : 1;
    constexpr int OUT_MATS = WIDE ? 2 : 1;       // the column halves a block writes (gate/up: one, after SwiGLU)
    constexpr int WARPS_N = (MOE_THREADS / 32) / WARPS_M;
    constexpr int MT = BM / WARPS_M / 16, NT = MOE_BN / WARPS_N / 8;  // m16 and n8 tiles a warp (a weight)
    // KB: 32-value blocks a k-step (v6: two MXFP4 blocks, 34 contiguous bytes of a weight row, a staged slot each)
    constexpr int STEP = MOE_BK * KB, STEP_VECS = STEP / 4;
    constexpr int A_VECS = (BM * STEP_VECS + MOE_THREADS - 1) / MOE_THREADS;
    static_assert(KB == 1 || (BF16 && KB == 2), "v6: two MXFP4 blocks (17 bytes each) a k-step on BF16");
    static_assert(!WORDS || (BF16 && KB == 2), "v7: v6 with the weights' bfloat16 pairs built from the codes");
    static_assert(KB * BM * 16 <= MOE_BM * MOE_LDS, "v6: the step's bfloat16 activations fit a[0]'s space");
    static_assert(MT >= 1 && MT * 16 * WARPS_M == BM && NT * 8 * WARPS_N == MOE_BN, "warp tiling");
    static_assert(!BF16 || (EXACT && STAGED), "v4: staged weights whose values are bfloat16 values");
    static_assert(!S8 || (!BF16 && STAGED), "v5: staged MXFP4 blocks");
    static_assert(!WIDE || (BF16 && !GATE_UP), "v8: the down product on BF16, 2 x MOE_BN columns a block");
    const int* tile = tiles + 4 * blockIdx.y;
    const int expert = tile[0], first = tile[1], rows = tile[2];
    if (rows <= 0) return;
    const int n0 = blockIdx.x * MOE_BN * OUT_MATS;
    // BF16 (v4): a row's 32 activations as 16 words of bfloat16 pairs, high parts in a[0]'s space, low in a[1]'s
    u32* const a_bf16[2] = {(u32*)&sm.a[0][0][0], (u32*)&sm.a[1][0][0]};
    // S8 (v5): two buffers of the int8 terms and their scales in a[0]'s space (2 x 64 rows x 16 words, then 2 x 64
    // float2): one buffer is filled while the other is read, one __syncthreads a step (buffer b at b times the
    // stride: an array of the two pointers indexed by the step would live in local memory); a[1]'s space holds
    // the weights' third stage
    u32* const a_s8 = (u32*)&sm.a[0][0][0];
    float2* const a_ds = (float2*)(a_s8 + 2 * MOE_BM * MOE_S8_WORDS);
    static_assert(sizeof(u32) * 2 * MOE_BM * MOE_S8_WORDS + sizeof(float2) * 2 * MOE_BM <= sizeof(sm.a[0]), "v5");
    static_assert(sizeof(sm.a[1]) >= sizeof(sm.raw[0]), "v5's third weight stage");
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int wm = (warp / WARPS_N) * (MT * 16), wn = (warp % WARPS_N) * (NT * 8);
    const int g = lane >> 2, q = lane & 3;
    if (tid < BM)
        sm.src_row[tid] = tid < rows ? (GATE_UP ? order[first + tid] / k_used : first + tid) : -1;
    const u8* w1 = W1 + (i64)expert * expert_bytes;
    const u8* w2 = GATE_UP ? W2 + (i64)expert * expert_bytes : w1;
    // the weight staging: thread tid copies the current block of row n0 + tid % 128 of weight tid / 128
    const int block_bytes = STAGED ? (int)(row_bytes / (K / MOE_BK)) : 0;
    const int k_blocks = K / MOE_BK;
    int words = (block_bytes + 3) >> 2;          // the fetched step's staged words (v6: one block in a last odd step)
    const int st_m = tid / MOE_BN, st_n = n0 + tid % MOE_BN + (WIDE ? st_m * MOE_BN : 0);   // WIDE: one weight
    const bool st_live = STAGED && st_m < NMAT && st_n < N;
    const u8* st_row = (st_m ? w2 : w1) + (i64)(st_n < N ? st_n : 0) * row_bytes;   // w2: w1 but for gate/up
    float acc[NMAT][MT][NT][4];
#pragma unroll
    for (int m = 0; m < NMAT; ++m)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[m][mt][nt][i] = 0.0f;
    float4 a_next[A_VECS];
    u32 raw_next[MOE_RAW_WORDS + 1];
    u32 raw_shift = 0;
    __syncthreads();
    // the next step's loads into registers (their latency runs behind the current step's products)
    auto fetch = [&](int k0) {
#pragma unroll
        for (int v = 0; v < A_VECS; ++v) {
            const int i = tid + v * MOE_THREADS;
            a_next[v] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            const int c = k0 + 4 * (i % STEP_VECS);
            if (i < BM * STEP_VECS && (KB == 1 || c < K)) {
                const int src = sm.src_row[i / STEP_VECS];
                if (src >= 0) a_next[v] = *(const float4*)(x + (i64)src * K + c);
            }
        }
        if (KB > 1) words = (min(KB, k_blocks - k0 / MOE_BK) * block_bytes + 3) >> 2;
        if (st_live && !S8) {
            // the block's bytes as aligned words (a row of blocks of 17..34 bytes is not aligned); the words
            // past the block stay within the weight's tail pad
            const unsigned long long addr = (unsigned long long)(st_row + (i64)(k0 / MOE_BK) * block_bytes);
            const u32* base = (const u32*)(addr & ~3ull);
            raw_shift = (u32)(addr & 3) * 8;
#pragma unroll
            for (int j = 0; j <= MOE_RAW_WORDS; ++j)
                if (j <= words) raw_next[j] = base[j];
        }
    };
    // the activations split once as they are stored, a[0] their high parts and a[1] their low parts (one buffer:
    // the step's products must be done before the next step's are stored, a second sync); v5's quantized into
    // buffer buf (its shuffles: whole warps skip or take part, BM * 8 being a multiple of 32)
    auto stage_a = [&](int buf) {
#pragma unroll
        for (int v = 0; v < A_VECS; ++v) {
            const int i = tid + v * MOE_THREADS;
            if (i >= BM * STEP_VECS) continue;
            const int r = i / STEP_VECS, c = 4 * (i % STEP_VECS);
            if (S8) {
                u32 t0, t1;
                float2 ds;
                moe_s8_quantize4(a_next[v], t0, t1, ds);
                u32* row = a_s8 + (buf * MOE_BM + r) * MOE_S8_WORDS;
                row[moe_s8_slot(c / 4, 0)] = t0;
                row[moe_s8_slot(c / 4, 1)] = t1;
                if (c == 0) a_ds[buf * MOE_BM + r] = ds;
            } else if (BF16) {
                const float4 x4 = a_next[v];
                u32 h[4], l[4];
                bf16_split_bits(x4.x, h[0], l[0]);
                bf16_split_bits(x4.y, h[1], l[1]);
                bf16_split_bits(x4.z, h[2], l[2]);
                bf16_split_bits(x4.w, h[3], l[3]);
                // block c / 32 of the step in its own BM x 16-word buffer: v4's row-major words (bank-conflict
                // free), or v7's pairs in moe_mxfp4_bf16_words' k order, k = 4j .. 4j + 3 (j = (c % 32) / 4) as
                // (k, k + 2) and (k + 1, k + 3), in fragment order
                const int j = (c % MOE_BK) / 4;
                if (WORDS) {
                    // rows r and r + 8 of a row tile interleave (moe_frag_word): this row's pair p is word 2p + h
                    // of the fragment of lane 4 (r % 8) + j % 4, product j / 4
                    const int o = (c / MOE_BK) * BM * 16 + moe_frag_word(r / 16, j / 4, 4 * (r % 8) + j % 4)
                                  + (r / 8) % 2;
                    a_bf16[0][o] = bf16_pack(h[0], h[2]);
                    a_bf16[0][o + 2] = bf16_pack(h[1], h[3]);
                    a_bf16[1][o] = bf16_pack(l[0], l[2]);
                    a_bf16[1][o + 2] = bf16_pack(l[1], l[3]);
                } else {
                    const int o = ((c / MOE_BK) * BM + r) * 16 + 2 * j;
                    *(uint2*)&a_bf16[0][o] = make_uint2(bf16_pack(h[0], h[1]), bf16_pack(h[2], h[3]));
                    *(uint2*)&a_bf16[1][o] = make_uint2(bf16_pack(l[0], l[1]), bf16_pack(l[2], l[3]));
                }
            } else {
                const float4 x4 = a_next[v];
                float4 h4, l4;
                tf32_split(x4.x, h4.x, l4.x);
                tf32_split(x4.y, h4.y, l4.y);
                tf32_split(x4.z, h4.z, l4.z);
                tf32_split(x4.w, h4.w, l4.w);
                *(float4*)&sm.a[0][r][c] = h4;
                *(float4*)&sm.a[1][r][c] = l4;
            }
        }
    };
    // v5: the weight blocks of the step at k0 by cp.async into stage `stage` (a committed group, empty for the
    // threads that copy nothing, so that every thread's groups count the steps alike)
    auto raw_stage = [&](int stage) { return stage == 2 ? (u8 (*)[MOE_RAW])&sm.a[1][0][0] : sm.raw[stage]; };
    auto copy_raw = [&](int k0, int stage) {
        if (st_live) {
            const unsigned long long addr = (unsigned long long)(st_row + (i64)(k0 / MOE_BK) * block_bytes);
            const u32* src = (const u32*)(addr & ~3ull);
            u8* slot = raw_stage(stage)[tid];
#pragma unroll
            for (int j = 0; j < MOE_S8_COPY_WORDS; ++j) cp_async4(slot + 4 * j, src + j);
            slot[MOE_S8_SHIFT] = (u8)(addr & 3);
        }
        cp_async_commit();
    };
    auto stage_raw = [&](int buf) {
        if (STAGED && st_m < NMAT) {
            u32* dst = (u32*)&sm.raw[buf][tid][0];
            u32 staged[MOE_RAW_WORDS];
#pragma unroll
            for (int j = 0; j < MOE_RAW_WORDS; ++j) {
                staged[j] = st_live ? __funnelshift_r(raw_next[j], raw_next[j + 1], raw_shift) : 0u;
                if (j < words) dst[j] = staged[j];
            }
            if constexpr (WORDS) {               // the scale bytes: the slot's bytes 0 and MOE_MXFP4_BYTES
                const uint2 s0 = moe_mxfp4_scale_words(staged[0] & 0xffu);
                const uint2 s1 = moe_mxfp4_scale_words((staged[MOE_MXFP4_BYTES / 4] >> (8 * (MOE_MXFP4_BYTES % 4)))
                                                       & 0xffu);
                sm.scales[buf][tid] = make_uint4(s0.x, s0.y, s1.x, s1.y);
            }
        }
    };
    const int steps = (k_blocks + KB - 1) / KB;
    if constexpr (S8) {
        // v5: the weights of steps 0 and 1 on their way; a column past N reads zeros (its outputs are not stored)
        if (STAGED && st_m < NMAT && !st_live)
#pragma unroll
            for (int stage = 0; stage < 3; ++stage)
#pragma unroll
                for (int j = 0; j < MOE_RAW_WORDS; ++j) ((u32*)raw_stage(stage)[tid])[j] = 0u;
        copy_raw(0, 0);
        if (steps > 1) copy_raw(MOE_BK, 1);
        else cp_async_commit();
        fetch(0);
        stage_a(0);
        cp_async_wait<1>();                      // step 0's group done (step 1's may still be in flight)
        __syncthreads();
        for (int step = 0; step < steps; ++step) {
            const int buf = step & 1, k0 = step * MOE_BK;
            // the stage read at step - 1 (every thread is past it: the sync that ended that step) takes step + 2's
            if (step + 2 < steps) copy_raw(k0 + 2 * MOE_BK, (step + 2) % 3);
            else cp_async_commit();
            if (step + 1 < steps) fetch(k0 + MOE_BK);
            moe_s8_step<NMAT, MT, NT>(raw_stage(step % 3), a_s8 + buf * MOE_BM * MOE_S8_WORDS, a_ds + buf * MOE_BM,
                                      wm, wn, g, q, acc);
            if (step + 1 < steps) stage_a(buf ^ 1);
            cp_async_wait<1>();                  // step + 1's weights copied (step + 2's may still be in flight)
            __syncthreads();
        }
    } else {
    fetch(0);
    stage_a(0);
    stage_raw(0);
    __syncthreads();
    for (int step = 0; step < steps; ++step) {
        const int buf = step & 1, k0 = step * STEP;
        if (step + 1 < steps) fetch(k0 + STEP);
        if constexpr (BF16) {
            moe_bf16_step<DQ, NMAT, MT, NT, 0, WORDS>(sm.raw[buf], sm.scales[buf], a_bf16, wm, wn, g, q, acc);
            if constexpr (KB > 1) {
                u32* const a_second[2] = {a_bf16[0] + BM * 16, a_bf16[1] + BM * 16};
                if (k0 + MOE_BK < K)             // the step's second block (not in a last odd step)
                    moe_bf16_step<DQ, NMAT, MT, NT, MOE_MXFP4_BYTES, WORDS>(sm.raw[buf], sm.scales[buf], a_second,
                                                                            wm, wn, g, q, acc);
            }
        } else {
        // the lane's activations of the step: rows wm + 16 mt + g and + 8, values 8q .. 8q + 7, split once
        u32 a_hi[MT][4][4], a_lo[MT][4][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int part = 0; part < 2; ++part) {
                const float* r0 = &sm.a[part][wm + 16 * mt + g][8 * q];
                const float* r1 = &sm.a[part][wm + 16 * mt + g + 8][8 * q];
                const float4 v0 = *(const float4*)r0, v1 = *(const float4*)(r0 + 4);
                const float4 v2 = *(const float4*)r1, v3 = *(const float4*)(r1 + 4);
                const float f[4][4] = {{v0.x, v2.x, v1.x, v3.x}, {v0.y, v2.y, v1.y, v3.y},
                                       {v0.z, v2.z, v1.z, v3.z}, {v0.w, v2.w, v1.w, v3.w}};
#pragma unroll
                for (int s = 0; s < 4; ++s)
#pragma unroll
                    for (int i = 0; i < 4; ++i) (part ? a_lo : a_hi)[mt][s][i] = __float_as_uint(f[s][i]);
            }
        }
#pragma unroll
        for (int m = 0; m < NMAT; ++m) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int c = wn + 8 * nt + g;
                float w[8];
                if constexpr (STAGED) {
                    moe_dq8<DQ>(&sm.raw[buf][m * MOE_BN + c][0], q, w);
                } else if (n0 + c < N) {
                    moe_dq8<DQ>((m ? w2 : w1) + (i64)(n0 + c) * row_bytes, (k0 >> 3) + q, w);
                } else {
#pragma unroll
                    for (int j = 0; j < 8; ++j) w[j] = 0.0f;
                }
#pragma unroll
                for (int s = 0; s < 4; ++s) {
                    u32 b_hi[2], b_lo[2];
                    if (EXACT) {
                        b_hi[0] = __float_as_uint(w[s]);
                        b_hi[1] = __float_as_uint(w[4 + s]);
                    } else {
                        split_bits(w[s], b_hi[0], b_lo[0]);
                        split_bits(w[4 + s], b_hi[1], b_lo[1]);
                    }
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        // the small terms first
                        mma_tf32_16x8x8_free(acc[m][mt][nt], a_lo[mt][s], b_hi);
                        if (!EXACT) mma_tf32_16x8x8_free(acc[m][mt][nt], a_hi[mt][s], b_lo);
                        mma_tf32_16x8x8_free(acc[m][mt][nt], a_hi[mt][s], b_hi);
                    }
                }
            }
        }
        }
        if (step + 1 < steps) {
            stage_raw(buf ^ 1);
            __syncthreads();                     // one activation buffer, read by this step
            stage_a(buf ^ 1);
        }
        __syncthreads();
    }
    }
#pragma unroll
    for (int m = 0; m < OUT_MATS; ++m) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int r = wm + 16 * mt + g + 8 * (i >> 1);
                const int n = n0 + m * MOE_BN + wn + 8 * nt + 2 * q + (i & 1);
                if (r >= rows || n >= N) continue;
                const i64 o = (i64)(first + r) * N + n;
                float v = acc[m][mt][nt][i] + (b1 ? b1[(i64)expert * N + n] : 0.0f);
                if (GATE_UP) {
                    const float u = acc[NMAT - 1][mt][nt][i] + (b2 ? b2[(i64)expert * N + n] : 0.0f);
                    v = clamped ? swiglu_clamped_f(v, u, has_limit, limit, alpha) : swiglu_f(v, u);
                }
                out[o] = v;
            }
        }
    }
    }
}

// The three tile heights: 64 rows as 2 x 4 warps of 32 x 32 columns (each activation fragment feeds 2 x 4 column
// tiles, each dequantized weight value 2 row tiles), 32 as 1 x 8 of 32 x 16, 16 as 1 x 8 of 16 x 16 (a weight value
// dequantized by one warp).
template <class DQ, bool EXACT, bool GATE_UP, bool STAGED, bool BF16, bool S8>
__device__ __forceinline__ void moe_grouped(
        int tile_rows, MoeShared& sm, const float* __restrict__ x, const int* __restrict__ order, int k_used,
        const int* __restrict__ tiles, const u8* __restrict__ W1, const u8* __restrict__ W2, i64 row_bytes,
        i64 expert_bytes, const float* __restrict__ b1, const float* __restrict__ b2, float* __restrict__ out,
        int N, int K, int clamped, int has_limit, float limit, float alpha) {
    if (tile_rows == 16)
        moe_tile<DQ, EXACT, GATE_UP, STAGED, BF16, S8, 16, 1>(sm, x, order, k_used, tiles, W1, W2, row_bytes,
                                                              expert_bytes, b1, b2, out, N, K, clamped, has_limit,
                                                              limit, alpha);
    else if (tile_rows == 32)
        moe_tile<DQ, EXACT, GATE_UP, STAGED, BF16, S8, 32, 1>(sm, x, order, k_used, tiles, W1, W2, row_bytes,
                                                              expert_bytes, b1, b2, out, N, K, clamped, has_limit,
                                                              limit, alpha);
    else
        moe_tile<DQ, EXACT, GATE_UP, STAGED, BF16, S8, 64, 2>(sm, x, order, k_used, tiles, W1, W2, row_bytes,
                                                              expert_bytes, b1, b2, out, N, K, clamped, has_limit,
                                                              limit, alpha);
}

// The grouped kernels' parameters, the same for every variant (kernels/moe.py launches them alike)
#define MOE_GATE_UP_PARAMS                                                                                   \
        const float* __restrict__ x, const int* __restrict__ order, int k_used, const int* __restrict__ tiles,\
        int tile_rows, const u8* __restrict__ gate, const u8* __restrict__ up, i64 row_bytes,                \
        i64 expert_bytes, const float* __restrict__ bias_gate, const float* __restrict__ bias_up,           \
        float* __restrict__ h, int F, int D, int clamped, int has_limit, float limit, float alpha
#define MOE_DOWN_PARAMS                                                                                      \
        const float* __restrict__ h, const int* __restrict__ tiles, int tile_rows, const u8* __restrict__ down,\
        i64 row_bytes, i64 expert_bytes, const float* __restrict__ bias_down, float* __restrict__ y, int D, int F

#define DEFINE_MOE_GEMM(fmt, exact, variant, bf16, s8)                                                        \
extern "C" __global__ void __launch_bounds__(MOE_THREADS) moe_gate_up_##variant##_##fmt(                    \
        MOE_GATE_UP_PARAMS) {                                                                               \
    __shared__ __align__(16) MoeShared sm;                                                                  \
    moe_grouped<moe_dq_##fmt, exact, true, !moe_superblock_format(#fmt), bf16, s8>(                         \
        tile_rows, sm, x, order, k_used, tiles, gate, up, row_bytes, expert_bytes, bias_gate, bias_up, h, F, \
        D, clamped, has_limit, limit, alpha);                                                                \
}                                                                                                            \
extern "C" __global__ void __launch_bounds__(MOE_THREADS) moe_down_##variant##_##fmt(                       \
        MOE_DOWN_PARAMS) {                                                                                  \
    __shared__ __align__(16) MoeShared sm;                                                                  \
    moe_grouped<moe_dq_##fmt, exact, false, !moe_superblock_format(#fmt), bf16, s8>(                        \
        tile_rows, sm, h, nullptr, 1, tiles, down, nullptr, row_bytes, expert_bytes, bias_down, nullptr, y, \
        D, F, 0, 0, 0.0f, 1.0f);                                                                             \
}

// v3: every format, TF32
#define DEFINE_MOE_GEMM_V3(fmt, exact) DEFINE_MOE_GEMM(fmt, exact, v3, false, false)
FOR_EACH_MOE_FORMAT(DEFINE_MOE_GEMM_V3)

// v4, v5, v6: a kernel a tile height (kernels/moe.py _suffix: moe_gate_up_v4_r32_mxfp4, ...), each with the registers
// its height needs: one kernel serving the three heights took the 64-row tile's 181 registers a thread at every
// height, one block of 8 warps an SM (ncu, H200, GPT-OSS-20B-shaped layer at T = 128: 12.5 % occupancy, half the
// schedulers' cycles without an eligible warp). BLOCKS: the blocks an SM the kernel is built for (__launch_bounds__'s
// minimum, so a register budget of 65536 / (256 BLOCKS)). Their tile_rows parameter is their own height (the
// launcher chooses the kernel by it), kept so that every variant is launched with the same arguments.
#define DEFINE_MOE_GEMM_ROWS(fmt, variant, bf16, s8, kb, words, rows, warps_m, gate_up_blocks, down_blocks)   \
extern "C" __global__ void __launch_bounds__(MOE_THREADS, gate_up_blocks) moe_gate_up_##variant##_r##rows##_##fmt(\
        MOE_GATE_UP_PARAMS) {                                                                               \
    __shared__ __align__(16) MoeShared sm;                                                                  \
    moe_tile<moe_dq_##fmt, true, true, true, bf16, s8, rows, warps_m, kb, words>(                           \
        sm, x, order, k_used, tiles, gate, up, row_bytes, expert_bytes, bias_gate, bias_up, h, F, D, clamped,\
        has_limit, limit, alpha);                                                                            \
}                                                                                                            \
extern "C" __global__ void __launch_bounds__(MOE_THREADS, down_blocks) moe_down_##variant##_r##rows##_##fmt(  \
        MOE_DOWN_PARAMS) {                                                                                  \
    __shared__ __align__(16) MoeShared sm;                                                                  \
    moe_tile<moe_dq_##fmt, true, false, true, bf16, s8, rows, warps_m, kb, words>(                          \
        sm, h, nullptr, 1, tiles, down, nullptr, row_bytes, expert_bytes, bias_down, nullptr, y, D, F, 0, 0,  \
        0.0f, 1.0f);                                                                                         \
}
// v8: v7's gate/up kernels (kernels/moe.py runs them) and down kernels of 2 x MOE_BN columns a block (moe_tile's WIDE),
// built for gate/up's blocks an SM (the same accumulators a thread)
#define DEFINE_MOE_DOWN_WIDE_ROWS(fmt, variant, kb, words, rows, warps_m, blocks)                             \
extern "C" __global__ void __launch_bounds__(MOE_THREADS, blocks) moe_down_##variant##_r##rows##_##fmt(       \
        MOE_DOWN_PARAMS) {                                                                                  \
    __shared__ __align__(16) MoeShared sm;                                                                  \
    moe_tile<moe_dq_##fmt, true, false, true, true, false, rows, warps_m, kb, words, true>(                 \
        sm, h, nullptr, 1, tiles, down, nullptr, row_bytes, expert_bytes, bias_down, nullptr, y, D, F, 0, 0,  \
        0.0f, 1.0f);                                                                                         \
}
// the heights' tilings as moe_grouped's; the blocks an SM: GATE_UP_BLOCKS_R<rows>, DOWN_BLOCKS_R<rows>, each the most
// that ptxas fits without spilling (nvcc -Xptxas -v; v4's gate/up: 104, 120, 182 registers; down: 74, 96, 121) but
// down's 32-row tile: three blocks (80 registers, a few spilled) timed the same as two on the H200 (0.446 / 0.449 ms)
#define DEFINE_MOE_GEMM_HEIGHTS(fmt, variant, bf16, s8, kb, words)                                            \
    DEFINE_MOE_GEMM_ROWS(fmt, variant, bf16, s8, kb, words, 16, 1, GATE_UP_BLOCKS_R16, DOWN_BLOCKS_R16)       \
    DEFINE_MOE_GEMM_ROWS(fmt, variant, bf16, s8, kb, words, 32, 1, GATE_UP_BLOCKS_R32, DOWN_BLOCKS_R32)       \
    DEFINE_MOE_GEMM_ROWS(fmt, variant, bf16, s8, kb, words, 64, 2, GATE_UP_BLOCKS_R64, DOWN_BLOCKS_R64)
#ifndef GATE_UP_BLOCKS_R16
#define GATE_UP_BLOCKS_R16 2
#define GATE_UP_BLOCKS_R32 2
#define GATE_UP_BLOCKS_R64 1
#define DOWN_BLOCKS_R16 3
#define DOWN_BLOCKS_R32 2
#define DOWN_BLOCKS_R64 2
#endif

// v4: BF16, for the formats whose values are bfloat16 values (kernels/moe.py MOE_BF16_FORMATS)
#define FOR_EACH_MOE_BF16_FORMAT(X) X(mxfp4)
#define DEFINE_MOE_GEMM_V4(fmt) DEFINE_MOE_GEMM_HEIGHTS(fmt, v4, true, false, 1, false)
FOR_EACH_MOE_BF16_FORMAT(DEFINE_MOE_GEMM_V4)

// v6: v4 with two 32-value blocks a k-step (half the steps, their barriers and load waits; twice the bytes in flight)
#define DEFINE_MOE_GEMM_V6(fmt) DEFINE_MOE_GEMM_HEIGHTS(fmt, v6, true, false, 2, false)
FOR_EACH_MOE_BF16_FORMAT(DEFINE_MOE_GEMM_V6)

// v7: v6 with MXFP4's bfloat16 values built from the codes' bits (moe_mxfp4_bf16_words); the same products
#define FOR_EACH_MOE_WORDS_FORMAT(X) X(mxfp4)
#define DEFINE_MOE_GEMM_V7(fmt) DEFINE_MOE_GEMM_HEIGHTS(fmt, v7, true, false, 2, true)
FOR_EACH_MOE_WORDS_FORMAT(DEFINE_MOE_GEMM_V7)

// v8: v7 with down blocks of 2 x MOE_BN columns
#define DEFINE_MOE_GEMM_V8(fmt)                                                                              \
    DEFINE_MOE_DOWN_WIDE_ROWS(fmt, v8, 2, true, 16, 1, GATE_UP_BLOCKS_R16)                                   \
    DEFINE_MOE_DOWN_WIDE_ROWS(fmt, v8, 2, true, 32, 1, GATE_UP_BLOCKS_R32)                                   \
    DEFINE_MOE_DOWN_WIDE_ROWS(fmt, v8, 2, true, 64, 2, GATE_UP_BLOCKS_R64)
FOR_EACH_MOE_WORDS_FORMAT(DEFINE_MOE_GEMM_V8)

// v5: int8, for MXFP4 alone (kernels/moe.py MOE_S8_FORMATS: its values are small integers times a power of two)
#define FOR_EACH_MOE_S8_FORMAT(X) X(mxfp4)
#define DEFINE_MOE_GEMM_V5(fmt) DEFINE_MOE_GEMM_HEIGHTS(fmt, v5, false, true, 1, false)
FOR_EACH_MOE_S8_FORMAT(DEFINE_MOE_GEMM_V5)
