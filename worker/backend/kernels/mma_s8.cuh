// One warp-wide int8 tensor-core product with int32 accumulation, d += a b for a 16x32 (row-major) by
// 32x8 (column-major) tile (PTX ISA, mma.sync.aligned.m16n8k32 .s8). Fragments, with g = lane / 4 and
// q = lane % 4, four int8 values a register (the lowest k in the lowest byte): a = A[g][4q..4q+3],
// A[g+8][4q..4q+3], A[g][4q+16..4q+19], A[g+8][4q+16..4q+19]; b = B[4q..4q+3][g], B[4q+16..4q+19][g];
// d = D[g][2q], D[g][2q+1], D[g+8][2q], D[g+8][2q+1]. Integer sums are exact (no rounding) while they
// stay within int32: 32 products of |x| <= 128 add at most 2^19 a call.
#pragma once
#include "common.cuh"

__device__ __forceinline__ void mma_s8_16x8x32(int* d, const u32* a, const u32* b) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
