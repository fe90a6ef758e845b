// One warp-wide BF16 tensor-core product with float32 accumulation, d += a b for a 16x16 (row-major) by
// 16x8 (column-major) tile (PTX ISA, mma.sync.aligned.m16n8k16 .bf16). Fragments, with g = lane / 4 and
// q = lane % 4, two bfloat16 a register (the lower k in the low half): a = A[g][2q..2q+1], A[g+8][2q..2q+1],
// A[g][2q+8..2q+9], A[g+8][2q+8..2q+9]; b = B[2q..2q+1][g], B[2q+8..2q+9][g]; d as the TF32 product's
// (mma_tf32.cuh). A product of two bfloat16 values is exact in float32.
#pragma once
#include "common.cuh"

__device__ __forceinline__ void mma_bf16_16x8x16(float* d, const u32* a, const u32* b) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// a b on two bfloat16 pairs (the lower halves, the upper halves), each rounded to bfloat16: fma with -0, so that
// a product's sign of zero is kept. Exact where the product is a bfloat16 value (a power-of-two scaling).
__device__ __forceinline__ u32 bf16x2_mul(u32 a, u32 b) {
    u32 d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
    return d;
}

// v rounded to nearest-even at bfloat16's 7 explicit mantissa bits, as float32 bits with the low 16 bits
// clear. A finite value that would round past FLT_MAX is truncated instead; Inf and NaN pass unchanged.
__device__ __forceinline__ u32 bf16_round_bits(float v) {
    const u32 u = __float_as_uint(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    u32 r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    if ((r & 0x7f800000u) == 0x7f800000u) r = u & 0xffff0000u;
    return r;
}

// v = hi + lo + e with hi, lo bfloat16 values and |e| <= 2^-18 |v| (v - hi is exact in float32, lo keeps
// 8 significant bits of it), as float32 bits; a non-finite v gets lo = 0.
__device__ __forceinline__ void bf16_split_bits(float v, u32& hi, u32& lo) {
    hi = bf16_round_bits(v);
    lo = (__float_as_uint(v) & 0x7f800000u) == 0x7f800000u ? 0u : bf16_round_bits(v - __uint_as_float(hi));
}

// Two bfloat16 values (float32 bits with the low 16 bits clear) in one register, `first` in the low half.
__device__ __forceinline__ u32 bf16_pack(u32 first, u32 second) {
    return (first >> 16) | (second & 0xffff0000u);
}
