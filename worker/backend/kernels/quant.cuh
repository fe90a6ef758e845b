// Dequantization of every stored weight format, 8 consecutive values at a time.
//
// A row of K values is stored as K / block_size blocks (GGUF / ggml layouts; see
// worker/quant/formats.py). dq8_<fmt>(row, c, w) writes values 8c .. 8c+7 of the row into w.
// Eight consecutive values always share one scale, in every format, which keeps the inner
// loops free of per-value scale lookups. Float formats may have K % 8 != 0: their tails go
// through dq1_<fmt>(row, k).
#pragma once
#include "common.cuh"
#include "iq_tables.cuh"

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

// ---- IQ2 / IQ3 / IQ1: indices into the lattice grids of iq_tables.cuh ------------------------------
// Eight consecutive values are one 8-value grid point (IQ2, IQ1) or two 4-value points (IQ3),
// with one scale. Group g = c & 31 of a super-block: sub-block ib = g / 4 of 32, l = g % 4.
__device__ __forceinline__ u32 load_u16(const u8* p) { return p[0] | (p[1] << 8); }
__device__ __forceinline__ u32 load_u32(const u8* p) {
    return p[0] | (p[1] << 8) | (p[2] << 16) | ((u32)p[3] << 24);
}
// ggml's ksigns_iq2xs: 7 stored sign bits; the 8th makes the number of minus signs even.
__device__ __forceinline__ int ksigns(u32 seven) { return (int)(seven | ((__popc(seven) & 1) << 7)); }

// x = db * grid[j], negated where bit j of `signs` is set (ggml: db * grid[j] * (+-1.f)); byte j of
// the little-endian grid point is grid[j].
__device__ __forceinline__ void signed_grid8(float db, unsigned long long grid, int signs, float* w) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
        w[j] = __fmul_rn(__fmul_rn(db, (float)((grid >> (8 * j)) & 255)), ((signs >> j) & 1) ? -1.0f : 1.0f);
}
// Two 4-value IQ3 grid points as one 8-value point.
__device__ __forceinline__ unsigned long long pair4(u32 lo, u32 hi) { return lo | ((unsigned long long)hi << 32); }

// d * (0.5 + ls) * f, as ggml rounds it
__device__ __forceinline__ float iq_scale(float d, u32 ls, float f) {
    return __fmul_rn(__fmul_rn(d, __fadd_rn(0.5f, (float)ls)), f);
}

// IQ2_XXS: d | 8 x (index[4]:u8 | u32 = 4 x 7 sign bits, 4-bit ls)
__device__ __forceinline__ void dq8_iq2_xxs(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 66;
    const int ib = (c & 31) >> 2, l = c & 3;
    const u8* group = b + 2 + 8 * ib;
    const u32 aux = load_u32(group + 4);
    const float db = iq_scale(load_f16(b), aux >> 28, 0.25f);
    signed_grid8(db, iq2xxs_grid[group[l]], ksigns((aux >> (7 * l)) & 127), w);
}

// IQ2_XS: d | qs[32]:u16 (9-bit index, 7 sign bits) | scales[8] (4-bit ls per 16 values)
__device__ __forceinline__ void dq8_iq2_xs(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 74;
    const int ib = (c & 31) >> 2, l = c & 3;
    const u32 q = load_u16(b + 2 + 2 * (4 * ib + l));
    const float db = iq_scale(load_f16(b), (b[66 + ib] >> (4 * (l >> 1))) & 15, 0.25f);
    signed_grid8(db, iq2xs_grid[q & 511], ksigns(q >> 9), w);
}

// IQ2_S: d | qs[32] (index low 8 bits) | signs[32] | qh[8] (2 high bits per index) | scales[8]
__device__ __forceinline__ void dq8_iq2_s(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 82;
    const int ib = (c & 31) >> 2, l = c & 3;
    const int index = b[2 + 4 * ib + l] | (((b[66 + ib] >> (2 * l)) & 3) << 8);
    const float db = iq_scale(load_f16(b), (b[74 + ib] >> (4 * (l >> 1))) & 15, 0.25f);
    signed_grid8(db, iq2s_grid[index], b[34 + 4 * ib + l], w);
}

// IQ3_XXS: d | qs[64] (one 4-value grid index per byte) | 8 x u32 (4 x 7 sign bits, 4-bit ls)
__device__ __forceinline__ void dq8_iq3_xxs(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 98;
    const int ib = (c & 31) >> 2, l = c & 3;
    const u32 aux = load_u32(b + 66 + 4 * ib);
    const float db = iq_scale(load_f16(b), aux >> 28, 0.5f);
    const u8* qs = b + 2 + 8 * ib + 2 * l;
    signed_grid8(db, pair4(iq3xxs_grid[qs[0]], iq3xxs_grid[qs[1]]), ksigns((aux >> (7 * l)) & 127), w);
}

// IQ3_S: d | qs[64] (index low 8 bits) | qh[8] (9th bits) | signs[32] | scales[4] ; x = d*(1 + 2 ls) * grid
__device__ __forceinline__ void dq8_iq3_s(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 110;
    const int ib = (c & 31) >> 2, l = c & 3;
    const int qh = b[66 + ib];
    const u8* qs = b + 2 + 8 * ib + 2 * l;
    const int ls = (b[106 + (ib >> 1)] >> (4 * (ib & 1))) & 15;
    const float db = __fmul_rn(load_f16(b), (float)(1 + 2 * ls));
    const u32 lo = iq3s_grid[qs[0] | (((qh >> (2 * l)) & 1) << 8)];
    const u32 hi = iq3s_grid[qs[1] | (((qh >> (2 * l + 1)) & 1) << 8)];
    signed_grid8(db, pair4(lo, hi), b[74 + 4 * ib + l], w);
}

// IQ1: x = dl * (grid[j] + delta), grid values -1, 0, 1 (int8 bytes), delta = +-0.125 (IQ1S_DELTA)
__device__ __forceinline__ void iq1_grid8(float dl, int index, bool negative_delta, float* w) {
    const unsigned long long grid = iq1s_grid[index];
    const float delta = negative_delta ? -0.125f : 0.125f;
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] = __fmul_rn(dl, __fadd_rn((float)(signed char)(grid >> (8 * j)), delta));
}

// IQ1_S: d | qs[32] (index low 8 bits) | qh[8]:u16 (3 x 3 high bits, 3-bit ls, delta sign)
__device__ __forceinline__ void dq8_iq1_s(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 50;
    const int ib = (c & 31) >> 2, l = c & 3;
    const u32 qh = load_u16(b + 34 + 2 * ib);
    const float dl = __fmul_rn(load_f16(b), (float)(2 * ((qh >> 12) & 7) + 1));
    iq1_grid8(dl, b[2 + 4 * ib + l] | (((qh >> (3 * l)) & 7) << 8), qh & 0x8000, w);
}

// IQ1_M: qs[32] | qh[16] (3 high bits + delta sign per index) | scales[8] = 4 x u16 (3-bit ls per
// 16 values; the f16 d is the top nibbles of the four u16)
__device__ __forceinline__ void dq8_iq1_m(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 56;
    const int ib = (c & 31) >> 2, l = c & 3;
    const u8* sc = b + 48;
    const u32 d_bits = (load_u16(sc) >> 12) | ((load_u16(sc + 2) >> 8) & 0x00f0) |
                       ((load_u16(sc + 4) >> 4) & 0x0f00) | (load_u16(sc + 6) & 0xf000);
    const u32 ls = (load_u16(sc + 2 * (ib >> 1)) >> (6 * (ib & 1) + 3 * (l >> 1))) & 7;
    const float dl = __fmul_rn(f16_bits_to_f32((u16)d_bits), (float)(2 * ls + 1));
    const int nib = (b[32 + 2 * ib + (l >> 1)] >> (4 * (l & 1))) & 15;
    iq1_grid8(dl, b[4 * ib + l] | ((nib & 7) << 8), nib & 8, w);
}

// ---- ternary: x = (q - 1) * d ----------------------------------------------------------------------
// TQ1_0: qs[48] (5 base-3 digits per byte) | qh[4] (4 digits) | d. Digit k of byte q is
// ((u8)(q * 3^k) * 3) >> 8. Value 32k + m (m < 32): digit k of qs[m]; 160 + 16k + m: of qs[32 + m];
// 240 + 4k + m: of qh[m].
__device__ __forceinline__ void dq8_tq1_0(const u8* r, int c, float* w) {
    const u8 pow3[5] = {1, 3, 9, 27, 81};
    const u8* b = r + (c >> 5) * 54;
    const int v0 = (c & 31) * 8;
    const float d = load_f16(b + 52);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int v = v0 + i;
        const int byte = v < 160 ? (v & 31) : v < 240 ? 32 + ((v - 160) & 15) : 48 + ((v - 240) & 3);
        const int k = v < 160 ? v >> 5 : v < 240 ? (v - 160) >> 4 : (v - 240) >> 2;
        const u8 q = (u8)(b[byte] * pow3[k]);
        w[i] = __fmul_rn((float)((((int)q * 3) >> 8) - 1), d);
    }
}

// TQ2_0: qs[64] (2-bit codes in Q2_K's order) | d
__device__ __forceinline__ void dq8_tq2_0(const u8* r, int c, float* w) {
    const u8* b = r + (c >> 5) * 66;
    const int v = (c & 31) * 8, n = v >> 7, j = (v >> 5) & 3, l0 = v & 31;
    const float d = load_f16(b + 64);
    const u8* qs = b + 32 * n + l0;
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = __fmul_rn((float)(((qs[i] >> (2 * j)) & 3) - 1), d);
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
QUANT_DQ1(iq2_xxs)
QUANT_DQ1(iq2_xs)
QUANT_DQ1(iq2_s)
QUANT_DQ1(iq3_xxs)
QUANT_DQ1(iq3_s)
QUANT_DQ1(iq1_s)
QUANT_DQ1(iq1_m)
QUANT_DQ1(tq1_0)
QUANT_DQ1(tq2_0)
QUANT_DQ1(mxfp4)
QUANT_DQ1(q4_k)
QUANT_DQ1(q5_k)
QUANT_DQ1(q6_k)

// One entry per format of the registry (worker/quant/formats.py), in its order; a test checks this.
#define FOR_EACH_FORMAT(X)                                                   \
    X(f32) X(f16) X(bf16)                                                    \
    X(q8_0) X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(mxfp4)                         \
    X(q2_k) X(q3_k) X(q4_k) X(q5_k) X(q6_k)                                  \
    X(iq4_nl) X(iq4_xs)                                                      \
    X(iq2_xxs) X(iq2_xs) X(iq2_s) X(iq3_xxs) X(iq3_s) X(iq1_s) X(iq1_m)      \
    X(tq1_0) X(tq2_0)
