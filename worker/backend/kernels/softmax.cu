// Row argmax: one block per row (greedy decoding picks on the device; sampling runs on the host).
#include "common.cuh"

// (a, ia) beats (b, ib): NaN first (as NumPy's argmax), then the larger value, then the lower index.
__device__ __forceinline__ bool beats(float a, int ia, float b, int ib) {
    const bool na = a != a, nb = b != b;
    if (na || nb) return na && (!nb || ia < ib);
    return a > b || (a == b && ia < ib);
}

extern "C" __global__ void argmax(const float* __restrict__ x, long long* __restrict__ out, int N) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* xr = x + (i64)blockIdx.x * N;
    float best = -__int_as_float(0x7f800000);
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < N; i += blockDim.x)
        if (beats(xr[i], i, best, bi)) { best = xr[i]; bi = i; }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, best, o);
        const int j = __shfl_xor_sync(0xffffffffu, bi, o);
        if (beats(v, j, best, bi)) { best = v; bi = j; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            if (beats(sv[w], si[w], best, bi)) { best = sv[w]; bi = si[w]; }
        out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
    }
}
