// Splitting float32 values for tensor-core products in TF32 that keep float32-like accuracy:
// v = hi + lo + e with hi, lo TF32 values (10 explicit mantissa bits) and |e| <= 2^-23 |v|
// (2^-22 |v| for the few v within 2^-11 of FLT_MAX). kernels/matmul.py states the product's bound.
#pragma once
#include "common.cuh"

// v rounded to nearest-even at TF32's 10 explicit mantissa bits (the low 13 bits cleared), so a
// tensor core reads it exactly whether it rounds or truncates its inputs. A finite value that
// would round past FLT_MAX is truncated instead; Inf and NaN pass unchanged.
__device__ __forceinline__ float tf32_round(float v) {
    const u32 u = __float_as_uint(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;
    u32 r = (u + 0xfffu + ((u >> 13) & 1u)) & 0xffffe000u;
    if ((r & 0x7f800000u) == 0x7f800000u) r = u & 0xffffe000u;
    return __uint_as_float(r);
}

// hi + lo = v to within 2^-23 |v| (v - hi is exact in float32; only lo's rounding loses bits;
// below 2^-114 lo is subnormal, where TF32 keeps steps of 2^-136). A non-finite v gets lo = 0 so
// that the lo terms add no NaN of their own.
__device__ __forceinline__ void tf32_split(float v, float& hi, float& lo) {
    hi = tf32_round(v);
    lo = (__float_as_uint(v) & 0x7f800000u) == 0x7f800000u ? 0.0f : tf32_round(v - hi);
}
