// One warp-wide TF32 tensor-core product, d += a b for a 16x8 (row-major) by 8x8 (column-major) tile
// with float32 accumulation (PTX ISA, mma.sync.aligned.m16n8k8 .tf32). Fragments, with
// g = lane / 4 and q = lane % 4: a = A[g][q], A[g+8][q], A[g][q+4], A[g+8][q+4]; b = B[q][g], B[q+4][g];
// d = D[g][2q], D[g][2q+1], D[g+8][2q], D[g+8][2q+1]. The operands are TF32 values already (tf32.cuh):
// the product of two is exact in float32, whatever the hardware does with their low 13 bits.
#pragma once
#include "common.cuh"

__device__ __forceinline__ void mma_tf32_16x8x8(float* d, const u32* a, const u32* b) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The same instruction without `volatile`: a pure function of its operands, so the compiler may interleave
// the products of independent accumulators (moe_gemm.cu's v2 kernels) instead of issuing them in source order.
__device__ __forceinline__ void mma_tf32_16x8x8_free(float* d, const u32* a, const u32* b) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
