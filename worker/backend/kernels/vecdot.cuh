// Integer dot products of one stored weight row with int8-quantized activations (the decode
// matvec), in the manner of llama.cpp's ggml-cuda/vecdotq.cuh: activations are quantized once per
// product input in blocks of 32 (quantize_q8 in vecdot.cu), and each weight block is multiplied
// with __dp4a on its packed integers, with no per-value float dequantization.
//
// Activation layout, per token t of T and block b of K/32:
//   xq[term * ts + t * K + 32 b + i]  int8, i < 32 (term 0; term 1 quantizes term 0's residual;
//                                      ts, the term stride, is at least T * K)
//   xds[t * K/32 + b] = (d0, d1, s, 0): x ~= d0 * q0 + d1 * q1, s = the exact float sum of the block.
// With two terms the activation error is about 1/32000 of the block's largest value (float-like);
// with one term it is llama.cpp's Q8_1 (about 1/254).
//
// Each format's vdot_<fmt>(row, u, ...) adds the contribution of "unit" u of the row (32 values;
// 64 for Q6_K) to acc[t] for every t < T. Weight layouts: worker/quant/formats.py and quant.cuh.
#pragma once
#include "common.cuh"

#define MMVQ_MAX_T 4   // tokens one launch handles (decode: 1)

typedef signed char i8;

// One warp quantizes one 32-value block, lane i holding value i (quantize_q8 in vecdot.cu, and the
// fused producers rmsnorm_q8 / swiglu_q8). Term 0: q0 = round(v / d0), d0 = max|v| / 127 (ggml's
// quantize_q8_1); term 1 quantizes the residual v - d0 q0 the same way, so that d0 q0 + d1 q1 carries
// v to about 1/32000 of the block's range. q: this value's term-0 byte; ds: the block's scales.
// The block's max and sum share one butterfly (warp_max's and warp_sum's steps, two independent
// shuffles a step: the same numbers, half the chain); every producer calls this one function.
__device__ __forceinline__ void quantize_block_warp(float v, i8* q, i64 term_stride, float4* ds, int terms) {
    float amax = fabsf(v), s = v;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m = __shfl_xor_sync(0xffffffffu, amax, o), t = __shfl_xor_sync(0xffffffffu, s, o);
        amax = fmaxf(amax, m);
        s += t;
    }
    const float d0 = amax / 127.0f;
    const float q0 = d0 > 0.0f ? rintf(v / d0) : 0.0f;
    float d1 = 0.0f;
    q[0] = (i8)(int)q0;
    if (terms > 1) {
        const float r = fmaf(-q0, d0, v);
        d1 = warp_max(fabsf(r)) / 127.0f;
        q[term_stride] = (i8)(int)(d1 > 0.0f ? rintf(r / d1) : 0.0f);
    }
    if ((threadIdx.x & 31) == 0) *ds = make_float4(d0, d1, s, 0.0f);
}

// 16 bytes from any byte address as four words: aligned word loads and funnel shifts. Reads up to
// 4 bytes past p + 15, which is why weight buffers carry WEIGHT_TAIL_PAD bytes (cuda_memory.py).
__device__ __forceinline__ void load16_any(const u8* p, int* v) {
    const unsigned long long a = (unsigned long long)p;
    const u32* w = (const u32*)(a & ~3ull);
    const u32 sh = (u32)(a & 3) * 8;
    const u32 w0 = __ldg(w), w1 = __ldg(w + 1), w2 = __ldg(w + 2), w3 = __ldg(w + 3), w4 = __ldg(w + 4);
    v[0] = (int)__funnelshift_r(w0, w1, sh);
    v[1] = (int)__funnelshift_r(w1, w2, sh);
    v[2] = (int)__funnelshift_r(w2, w3, sh);
    v[3] = (int)__funnelshift_r(w3, w4, sh);
}

__device__ __forceinline__ void load16_aligned(const u8* p, int* v) {
    const int4 q = __ldg((const int4*)p);
    v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
}

__device__ __forceinline__ float load_f16_a2(const u8* p) { return f16_bits_to_f32(*(const u16*)p); }

__device__ __forceinline__ int isum4(const int* v, const int4 x, int acc) {
    acc = __dp4a(v[0], x.x, acc);
    acc = __dp4a(v[1], x.y, acc);
    acc = __dp4a(v[2], x.z, acc);
    return __dp4a(v[3], x.w, acc);
}

// d0 * sum(v . xq0) + d1 * sum(v . xq1) over 16 activation bytes at offset `off` of token t's row.
__device__ __forceinline__ float xdot16(const int* v, const i8* xq, i64 term_stride, i64 off, float4 ds, int terms) {
    const int s0 = isum4(v, __ldg((const int4*)(xq + off)), 0);
    float r = ds.x * (float)s0;
    if (terms > 1) r = fmaf(ds.y, (float)isum4(v, __ldg((const int4*)(xq + term_stride + off)), 0), r);
    return r;
}

// Same over 32 bytes: lo with activation bytes [off, off+16), hi with [off+16, off+32).
__device__ __forceinline__ float xdot32(const int* lo, const int* hi, const i8* xq, i64 term_stride, i64 off,
                                        float4 ds, int terms) {
    int s0 = isum4(lo, __ldg((const int4*)(xq + off)), 0);
    s0 = isum4(hi, __ldg((const int4*)(xq + off + 16)), s0);
    float r = ds.x * (float)s0;
    if (terms > 1) {
        int s1 = isum4(lo, __ldg((const int4*)(xq + term_stride + off)), 0);
        s1 = isum4(hi, __ldg((const int4*)(xq + term_stride + off + 16)), s1);
        r = fmaf(ds.y, (float)s1, r);
    }
    return r;
}

// The 32 values of a "nibble" block (Q4_0, Q4_1, Q5_0, MXFP4): value i < 16 is the low nibble of
// byte i, value 16 + i the high nibble.
__device__ __forceinline__ void split_nibbles(const int* qs, int* lo, int* hi) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        lo[i] = qs[i] & 0x0F0F0F0F;
        hi[i] = (qs[i] >> 4) & 0x0F0F0F0F;
    }
}

#define VDOT_ARGS const u8* __restrict__ row, int u, const i8* __restrict__ xq, const float4* __restrict__ xds, \
                  int K, int T, i64 ts, int terms, float* acc
#define FOR_T _Pragma("unroll") for (int t = 0; t < MMVQ_MAX_T; ++t) if (t < T)
#define X_AT(t, block) xq + (i64)(t) * K, ts, 32 * (i64)(block)
#define DS_AT(t, block) __ldg(xds + (i64)(t) * (K >> 5) + (block))

// Q4_0: d:f16 | qs[16] ; x = d (q - 8)
__device__ __forceinline__ void vdot_q4_0(VDOT_ARGS) {
    const u8* b = row + (i64)u * 18;
    const float d = load_f16_a2(b);
    int qs[4], lo[4], hi[4];
    load16_any(b + 2, qs);
    split_nibbles(qs, lo, hi);
    FOR_T {
        const float4 ds = DS_AT(t, u);
        acc[t] = fmaf(d, xdot32(lo, hi, X_AT(t, u), ds, terms) - 8.0f * ds.z, acc[t]);
    }
}

// Q4_1: d:f16 | m:f16 | qs[16] ; x = d q + m
__device__ __forceinline__ void vdot_q4_1(VDOT_ARGS) {
    const u8* b = row + (i64)u * 20;
    const u32 dm = __ldg((const u32*)b);
    const float d = f16_bits_to_f32((u16)(dm & 0xFFFF)), m = f16_bits_to_f32((u16)(dm >> 16));
    int qs[4], lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) qs[i] = (int)__ldg((const u32*)(b + 4) + i);
    split_nibbles(qs, lo, hi);
    FOR_T {
        const float4 ds = DS_AT(t, u);
        acc[t] = fmaf(d, xdot32(lo, hi, X_AT(t, u), ds, terms), fmaf(m, ds.z, acc[t]));
    }
}

// bit j of h (j < 4) -> bit 4 of byte j
__device__ __forceinline__ int spread4_to_bit4(u32 h) {
    return (int)(((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25));
}

// Q5_0: d:f16 | qh[4] (bit j: fifth bit of value j) | qs[16] ; x = d (q - 16)
__device__ __forceinline__ void vdot_q5_0(VDOT_ARGS) {
    const u8* b = row + (i64)u * 22;
    const float d = load_f16_a2(b);
    const u32 qh = (u32)*(const u16*)(b + 2) | ((u32)*(const u16*)(b + 4) << 16);
    int qs[4], lo[4], hi[4];
    load16_any(b + 6, qs);
    split_nibbles(qs, lo, hi);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        lo[i] |= spread4_to_bit4(qh >> (4 * i));
        hi[i] |= spread4_to_bit4(qh >> (16 + 4 * i));
    }
    FOR_T {
        const float4 ds = DS_AT(t, u);
        acc[t] = fmaf(d, xdot32(lo, hi, X_AT(t, u), ds, terms) - 16.0f * ds.z, acc[t]);
    }
}

// Q8_0: d:f16 | q[32]:int8 ; x = d q
__device__ __forceinline__ void vdot_q8_0(VDOT_ARGS) {
    const u8* b = row + (i64)u * 34;
    const float d = load_f16_a2(b);
    int lo[4], hi[4];
    load16_any(b + 2, lo);
    load16_any(b + 18, hi);
    FOR_T acc[t] = fmaf(d, xdot32(lo, hi, X_AT(t, u), DS_AT(t, u), terms), acc[t]);
}

// MXFP4: e:E8M0 | qs[16] of E2M1 ; x = 2^(e-128) * (2 fp4) as in quant.cuh's dq8_mxfp4.
// Four nibbles (one a byte) -> four int8 of 2*fp4: magnitudes {0,1,2,3,4,6,8,12} by byte
// permutation, then the sign bit negates its byte.
__device__ __forceinline__ int fp4x4_doubled(int n) {
    const u32 m = (u32)n & 0x07070707u;
    const u32 packed = m | (m >> 4);
    const u32 sel = (packed & 0xFFu) | ((packed >> 8) & 0xFF00u);
    const u32 mag = __byte_perm(0x03020100u, 0x0C080604u, sel);
    const u32 neg = (((u32)n >> 3) & 0x01010101u) * 0xFFu;
    return (int)__vsub4(mag ^ neg, neg);
}

__device__ __forceinline__ float e8m0_half_v(u32 e) {
    return __uint_as_float(e >= 2 ? (e - 1) << 23 : 0x00400000u >> (1 - e));
}

__device__ __forceinline__ void vdot_mxfp4(VDOT_ARGS) {
    const u8* b = row + (i64)u * 17;
    const float s = e8m0_half_v(__ldg(b));
    int qs[4], lo[4], hi[4];
    load16_any(b + 1, qs);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        lo[i] = fp4x4_doubled(qs[i] & 0x0F0F0F0F);
        hi[i] = fp4x4_doubled((qs[i] >> 4) & 0x0F0F0F0F);
    }
    FOR_T acc[t] = fmaf(s, xdot32(lo, hi, X_AT(t, u), DS_AT(t, u), terms), acc[t]);
}

// ---- K-quants: super-blocks of 256 ---------------------------------------------------------------
// ggml's get_scale_min_k4 (quant.cuh's scale_min_k4, read through the read-only cache).
__device__ __forceinline__ void scale_min_k4_v(int j, const u8* q, float* sc, float* m) {
    if (j < 4) {
        *sc = (float)(__ldg(q + j) & 63);
        *m = (float)(__ldg(q + j + 4) & 63);
    } else {
        *sc = (float)((__ldg(q + j + 4) & 0xF) | ((__ldg(q + j - 4) >> 6) << 4));
        *m = (float)((__ldg(q + j + 4) >> 4) | ((__ldg(q + j) >> 6) << 4));
    }
}

// Unit u of a Q4_K/Q5_K row: super-block u / 8, byte range [16 h, 16 h + 16) (h = u & 1) of the
// 32 qs bytes shared by sub-blocks 2p (low nibbles) and 2p + 1 (high nibbles), p = (u & 7) / 2.
// x = d sc[s] q - dmin m[s]
__device__ __forceinline__ void vdot_q4_k(VDOT_ARGS) {
    const int sb = u >> 3, p = (u & 7) >> 1, h = u & 1;
    const u8* b = row + (i64)sb * 144;
    const u32 dd = __ldg((const u32*)b);
    const float d = f16_bits_to_f32((u16)(dd & 0xFFFF)), dmin = f16_bits_to_f32((u16)(dd >> 16));
    float sc0, m0, sc1, m1;
    scale_min_k4_v(2 * p, b + 4, &sc0, &m0);
    scale_min_k4_v(2 * p + 1, b + 4, &sc1, &m1);
    int qs[4], lo[4], hi[4];
    load16_aligned(b + 16 + 32 * p + 16 * h, qs);
    split_nibbles(qs, lo, hi);
    const int blk = 8 * sb + 2 * p;
    FOR_T {
        const float4 ds0 = DS_AT(t, blk), ds1 = DS_AT(t, blk + 1);
        const float r = sc0 * xdot16(lo, xq + (i64)t * K, ts, 32 * (i64)blk + 16 * h, ds0, terms)
                      + sc1 * xdot16(hi, xq + (i64)t * K, ts, 32 * (i64)(blk + 1) + 16 * h, ds1, terms);
        acc[t] = fmaf(d, r, fmaf(-0.5f * dmin, m0 * ds0.z + m1 * ds1.z, acc[t]));
    }
}

// Q5_K: d | dmin | scales[12] | qh[32] | qs[128] ; fifth bit of value l of sub-block s: qh[l] bit s
__device__ __forceinline__ void vdot_q5_k(VDOT_ARGS) {
    const int sb = u >> 3, p = (u & 7) >> 1, h = u & 1;
    const u8* b = row + (i64)sb * 176;
    const u32 dd = __ldg((const u32*)b);
    const float d = f16_bits_to_f32((u16)(dd & 0xFFFF)), dmin = f16_bits_to_f32((u16)(dd >> 16));
    float sc0, m0, sc1, m1;
    scale_min_k4_v(2 * p, b + 4, &sc0, &m0);
    scale_min_k4_v(2 * p + 1, b + 4, &sc1, &m1);
    int qs[4], qh[4], lo[4], hi[4];
    load16_aligned(b + 48 + 32 * p + 16 * h, qs);
    load16_aligned(b + 16 + 16 * h, qh);
    split_nibbles(qs, lo, hi);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        lo[i] |= (((u32)qh[i] >> (2 * p)) & 0x01010101u) << 4;
        hi[i] |= (((u32)qh[i] >> (2 * p + 1)) & 0x01010101u) << 4;
    }
    const int blk = 8 * sb + 2 * p;
    FOR_T {
        const float4 ds0 = DS_AT(t, blk), ds1 = DS_AT(t, blk + 1);
        const float r = sc0 * xdot16(lo, xq + (i64)t * K, ts, 32 * (i64)blk + 16 * h, ds0, terms)
                      + sc1 * xdot16(hi, xq + (i64)t * K, ts, 32 * (i64)(blk + 1) + 16 * h, ds1, terms);
        acc[t] = fmaf(d, r, fmaf(-0.5f * dmin, m0 * ds0.z + m1 * ds1.z, acc[t]));
    }
}

// Q6_K: ql[128] | qh[64] | scales[16]:int8 | d ; value 128h + 32g + l (quant.cuh's dq8_q6_k).
// Unit u (64 values): super-block u / 4, half h = (u & 3) / 2, l in [16 lh, 16 lh + 16) for the four
// groups g; scale index 8h + 2g + lh; x = d sc (q - 32).
__device__ __forceinline__ void vdot_q6_k(VDOT_ARGS) {
    const int sb = u >> 2, h = (u & 3) >> 1, lh = u & 1;
    const u8* b = row + (i64)sb * 210;
    const float d = load_f16_a2(b + 208);
    int qa[4], qb[4], qh[4], q[4][4];
    load16_any(b + 64 * h + 16 * lh, qa);
    load16_any(b + 64 * h + 32 + 16 * lh, qb);
    load16_any(b + 128 + 32 * h + 16 * lh, qh);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        q[0][i] = (int)__vsub4((u32)((qa[i] & 0x0F0F0F0F) | ((qh[i] << 4) & 0x30303030)), 0x20202020u);
        q[1][i] = (int)__vsub4((u32)((qb[i] & 0x0F0F0F0F) | ((qh[i] << 2) & 0x30303030)), 0x20202020u);
        q[2][i] = (int)__vsub4((u32)(((qa[i] >> 4) & 0x0F0F0F0F) | (qh[i] & 0x30303030)), 0x20202020u);
        q[3][i] = (int)__vsub4((u32)(((qb[i] >> 4) & 0x0F0F0F0F) | (((u32)qh[i] >> 2) & 0x30303030)), 0x20202020u);
    }
    float sc[4];
#pragma unroll
    for (int g = 0; g < 4; ++g) sc[g] = (float)((const signed char*)b)[192 + 8 * h + 2 * g + lh];
    const int blk = 8 * sb + 4 * h;
    FOR_T {
        float r = 0.0f;
#pragma unroll
        for (int g = 0; g < 4; ++g)
            r = fmaf(sc[g], xdot16(q[g], xq + (i64)t * K, ts, 32 * (i64)(blk + g) + 16 * lh,
                                   DS_AT(t, blk + g), terms), r);
        acc[t] = fmaf(d, r, acc[t]);
    }
}

// Values per unit of each format (the kernel's loop runs over K / MMVQ_UNIT_<fmt> units a row).
#define MMVQ_UNIT_q4_0 32
#define MMVQ_UNIT_q4_1 32
#define MMVQ_UNIT_q5_0 32
#define MMVQ_UNIT_q8_0 32
#define MMVQ_UNIT_mxfp4 32
#define MMVQ_UNIT_q4_k 32
#define MMVQ_UNIT_q5_k 32
#define MMVQ_UNIT_q6_k 64

#define FOR_EACH_VECDOT_FORMAT(X) X(q4_0) X(q4_1) X(q5_0) X(q8_0) X(mxfp4) X(q4_k) X(q5_k) X(q6_k)

// Format codes of mmvq_segments (a runtime switch): vecdot.py's MMVQ_FORMAT_CODES.
#define MMVQ_FMT_q4_0 0
#define MMVQ_FMT_q4_1 1
#define MMVQ_FMT_q5_0 2
#define MMVQ_FMT_q8_0 3
#define MMVQ_FMT_mxfp4 4
#define MMVQ_FMT_q4_k 5
#define MMVQ_FMT_q5_k 6
#define MMVQ_FMT_q6_k 7
#define MMVQ_MAX_SEGMENTS 3
