// Dequantization of every stored weight format, 8 consecutive values at a time.
//
// A row of K values is stored as K / block_size blocks (GGUF / ggml layouts; see
// worker/quant/formats.py). dq8_<fmt>(row, c, w) writes values 8c .. 8c+7 of the row into w.
// Eight consecutive values always share one scale, in every format, which keeps the inner
// loops free of per-value scale lookups. Float formats may have K % 8 != 0: their tails go
// through dq1_<fmt>(row, k).
#pragma once
#include "common.cuh"

// ---- plain floats ------------------------------------------------------------------------------
__device__ __forceinline__ void dq8_f32(const u8* r, int c, float* w) {
    const float* p = (const float*)r + 8 * c;
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = p[i];
}
__device__ __forceinline__ float dq1_f32(const u8* r, int k) { return ((const float*)r)[k]; }

__device__ __forceinline__ void dq8_f16(const u8* r, int c, float* w) {
    const u16* p = (const u16*)r + 8 * c;
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = f16_bits_to_f32(p[i]);
}
__device__ __forceinline__ float dq1_f16(const u8* r, int k) { return f16_bits_to_f32(((const u16*)r)[k]); }

__device__ __forceinline__ void dq8_bf16(const u8* r, int c, float* w) {
    const u16* p = (const u16*)r + 8 * c;
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = bf16_bits_to_f32(p[i]);
}
__device__ __forceinline__ float dq1_bf16(const u8* r, int k) { return bf16_bits_to_f32(((const u16*)r)[k]); }

// ---- 32-value blocks -----------------------------------------------------------------------------
// Q8_0: d:f16 | q[32]:int8 ; x = d*q
__device__ __forceinline__ void dq8_q8_0(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 2) * 34;
    const float d = load_f16(b);
    const signed char* q = (const signed char*)(b + 2 + (c & 3) * 8);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = d * (float)q[i];
}

// Values 0..15 are the low nibbles of qs[0..15], values 16..31 the high nibbles.
__device__ __forceinline__ void nibbles8(const u8* qs, int part, int* q) {
    const u8* p = qs + (part & 1) * 8;
    const int shift = (part >> 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i] = (p[i] >> shift) & 15;
}

// Q4_0: d:f16 | qs[16] ; x = d*(q - 8)
__device__ __forceinline__ void dq8_q4_0(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 2) * 18;
    const float d = load_f16(b);
    int q[8];
    nibbles8(b + 2, c & 3, q);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = d * (float)(q[i] - 8);
}

// Q4_1: d:f16 | m:f16 | qs[16] ; x = d*q + m
__device__ __forceinline__ void dq8_q4_1(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 2) * 20;
    const float d = load_f16(b), m = load_f16(b + 2);
    int q[8];
    nibbles8(b + 4, c & 3, q);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __fadd_rn(__fmul_rn(d, (float)q[i]), m);
}

// Q5_0: d:f16 | qh:u32 | qs[16] ; q = nibble as Q4_0 | (bit j of qh) << 4, x = d*(q - 16).
// Part p of a block holds values 8p..8p+7, whose fifth bits are exactly qh byte p.
__device__ __forceinline__ void dq8_q5_0(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 2) * 22;
    const float d = load_f16(b);
    const int hb = b[2 + (c & 3)];
    int q[8];
    nibbles8(b + 6, c & 3, q);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = d * (float)((q[i] | (((hb >> i) & 1) << 4)) - 16);
}

// Q5_1: d:f16 | m:f16 | qh:u32 | qs[16] ; x = d*q + m
__device__ __forceinline__ void dq8_q5_1(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 2) * 24;
    const float d = load_f16(b), m = load_f16(b + 2);
    const int hb = b[4 + (c & 3)];
    int q[8];
    nibbles8(b + 8, c & 3, q);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __fadd_rn(__fmul_rn(d, (float)(q[i] | (((hb >> i) & 1) << 4))), m);
}

// MXFP4: e:E8M0 | qs[16] of E2M1 ; x = 2^(e-128) * (2*fp4)   (ggml's exact form)
__device__ __forceinline__ float e8m0_half(u32 e) {
    return __uint_as_float(e >= 2 ? (e - 1) << 23 : 0x00400000u >> (1 - e));
}
__device__ __forceinline__ void dq8_mxfp4(const u8* r, int c, float* w) {
    const float fp4_doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    const u8* b = r + (c >> 2) * 17;
    const float s = e8m0_half(b[0]);
    int q[8];
    nibbles8(b + 1, c & 3, q);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = s * fp4_doubled[q[i]];
}

// ---- IQ4: 4-bit indices into ggml's table of 16 non-linear levels (kvalues_iq4nl, ggml-common.h)
#define IQ4_LEVELS {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}

// IQ4_NL: d:f16 | qs[16] ; nibble order as Q4_0, x = d * level
__device__ __forceinline__ void dq8_iq4_nl(const u8* r, int c, float* w) {
    const float levels[16] = IQ4_LEVELS;
    const u8* b = r + (c >> 2) * 18;
    const float d = load_f16(b);
    int q[8];
    nibbles8(b + 2, c & 3, q);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __fmul_rn(d, levels[q[i]]);
}

// IQ4_XS: d:f16 | scales_h:u16 | scales_l[4] | qs[128] ; sub-block ib of 32 is an IQ4_NL block
// (qs[16 ib ..]) scaled by d*(ls - 32), ls = nibble ib%2 of scales_l[ib/2] | bits 2ib of scales_h << 4
__device__ __forceinline__ void dq8_iq4_xs(const u8* r, int c, float* w) {
    const float levels[16] = IQ4_LEVELS;
    const u8* b = r + (c >> 5) * 136;
    const int ib = (c & 31) >> 2;
    const int scales_h = b[2] | (b[3] << 8);
    const int ls = ((b[4 + (ib >> 1)] >> (4 * (ib & 1))) & 15) | (((scales_h >> (2 * ib)) & 3) << 4);
    const float dl = __fmul_rn(load_f16(b), (float)(ls - 32));
    int q[8];
    nibbles8(b + 8 + 16 * ib, c & 3, q);
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __fmul_rn(dl, levels[q[i]]);
}

// ---- K-quants: super-blocks of 256 ---------------------------------------------------------------
// ggml's get_scale_min_k4: 8 six-bit scales and mins packed in 12 bytes.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q2_K and Q3_K store 2-bit planes: value v = 128n + 32j + l is (qs[32n + l] >> 2j) & 3, and
// the 16 values of sub-block v / 16 share one scale.
// Q2_K: scales[16] (low nibble scale, high nibble min) | qs[64] | d | dmin ; x = d*sc*q - dmin*m
__device__ __forceinline__ void dq8_q2_k(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 84;
    const int v = (c & 31) * 8, n = v >> 7, j = (v >> 5) & 3, l0 = v & 31;
    const int sc = b[v >> 4];
    const float dl = __fmul_rn(load_f16(b + 80), (float)(sc & 15));
    const float ml = __fmul_rn(load_f16(b + 82), (float)(sc >> 4));
    const u8* qs = b + 16 + 32 * n + l0;
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __fsub_rn(__fmul_rn(dl, (float)((qs[i] >> (2 * j)) & 3)), ml);
}

// Q3_K: hmask[32] | qs[64] | scales[12] | d ; scale s: low 4 bits = nibble s >> 3 of scales[s & 7],
// high 2 bits = bits 2(s >> 2) of scales[8 + (s & 3)]; x = d*(sc - 32) * (q - (bit 4n+j of hmask[l] ? 0 : 4))
__device__ __forceinline__ void dq8_q3_k(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 110;
    const int v = (c & 31) * 8, n = v >> 7, j = (v >> 5) & 3, l0 = v & 31, s = v >> 4;
    const u8* sc_bytes = b + 96;
    const int sc = (((sc_bytes[s & 7] >> (4 * (s >> 3))) & 15) | (((sc_bytes[8 + (s & 3)] >> (2 * (s >> 2))) & 3) << 4)) - 32;
    const float dl = __fmul_rn(load_f16(b + 108), (float)sc);
    const u8* qs = b + 32 + 32 * n + l0;
    const u8* hm = b + l0;
    const int hbit = 4 * n + j;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int q = ((qs[i] >> (2 * j)) & 3) - (((hm[i] >> hbit) & 1) ? 0 : 4);
        w[i] = __fmul_rn(dl, (float)q);
    }
}

// Q4_K: d | dmin | scales[12] | qs[128] ; sub-block s of 32: x = d*sc[s]*q - dmin*m[s]
__device__ __forceinline__ void dq8_q4_k(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 144;
    const int j0 = (c & 31) * 8, s = j0 >> 5, l0 = j0 & 31;
    int sc, m;
    scale_min_k4(s, b + 4, &sc, &m);
    const float d1 = __fmul_rn(load_f16(b), (float)sc), m1 = __fmul_rn(load_f16(b + 2), (float)m);
    const u8* qs = b + 16 + (s >> 1) * 32 + l0;
    const int shift = (s & 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __fsub_rn(__fmul_rn(d1, (float)((qs[i] >> shift) & 15)), m1);
}

// Q5_K: d | dmin | scales[12] | qh[32] | qs[128] ; fifth bit of value l of sub-block s: qh[l] bit s
__device__ __forceinline__ void dq8_q5_k(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 176;
    const int j0 = (c & 31) * 8, s = j0 >> 5, l0 = j0 & 31;
    int sc, m;
    scale_min_k4(s, b + 4, &sc, &m);
    const float d1 = __fmul_rn(load_f16(b), (float)sc), m1 = __fmul_rn(load_f16(b + 2), (float)m);
    const u8* qh = b + 16 + l0;
    const u8* qs = b + 48 + (s >> 1) * 32 + l0;
    const int shift = (s & 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int q = ((qs[i] >> shift) & 15) | (((qh[i] >> s) & 1) << 4);
        w[i] = __fsub_rn(__fmul_rn(d1, (float)q), m1);
    }
}

// Q6_K: ql[128] | qh[64] | scales[16]:int8 | d ; value 128h + 32g + l:
//   low 4 bits: ql[64h + 32(g&1) + l] (low nibble for g < 2), high 2 bits: qh[32h + l] >> 2g
__device__ __forceinline__ void dq8_q6_k(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 210;
    const int j0 = (c & 31) * 8, h = j0 >> 7, g = (j0 & 127) >> 5, l0 = j0 & 31;
    const float scale = __fmul_rn(load_f16(b + 208), (float)((const signed char*)(b + 192))[j0 >> 4]);
    const u8* ql = b + 64 * h + 32 * (g & 1) + l0;
    const u8* qh = b + 128 + 32 * h + l0;
    const int low_shift = (g >> 1) * 4, high_shift = 2 * g;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int q = (((ql[i] >> low_shift) & 15) | (((qh[i] >> high_shift) & 3) << 4)) - 32;
        w[i] = __fmul_rn(scale, (float)q);
    }
}

// Quant formats have K % 32 == 0, so they never have a tail; these exist for the macro below.
#define QUANT_DQ1(fmt)                                                           \
    __device__ __forceinline__ float dq1_##fmt(const u8* r, int k) {             \
        float w[8];                                                              \
        dq8_##fmt(r, k >> 3, w);                                                 \
        float v = w[0];                                                          \
        _Pragma("unroll") for (int i = 1; i < 8; ++i) if ((k & 7) == i) v = w[i]; \
        return v;                                                                \
    }
QUANT_DQ1(q8_0)
QUANT_DQ1(q4_0)
QUANT_DQ1(q4_1)
QUANT_DQ1(q5_0)
QUANT_DQ1(q5_1)
QUANT_DQ1(q2_k)
QUANT_DQ1(q3_k)
QUANT_DQ1(iq4_nl)
QUANT_DQ1(iq4_xs)
QUANT_DQ1(mxfp4)
QUANT_DQ1(q4_k)
QUANT_DQ1(q5_k)
QUANT_DQ1(q6_k)

// One entry per format of the registry (worker/quant/formats.py), in its order; a test checks this.
#define FOR_EACH_FORMAT(X)                                                   \
    X(f32) X(f16) X(bf16)                                                    \
    X(q8_0) X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(mxfp4)                         \
    X(q2_k) X(q3_k) X(q4_k) X(q5_k) X(q6_k)                                  \
    X(iq4_nl) X(iq4_xs)
