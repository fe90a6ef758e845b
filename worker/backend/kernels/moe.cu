// Mixture-of-experts routing and combination on the device (GPT-OSS decode), so that a decode step
// needs no host round trip to pick its experts: the chosen ids stay in device memory, where the
// expert products (vecdot.cu's mmvq slots) read them.
#include "common.cuh"

// (a, ia) ranks before (b, ib): larger logit first, the lower expert on ties (a stable argsort of
// -logits, as worker/backend/base.py's top_k_softmax).
__device__ __forceinline__ bool ranks_before(float a, int ia, float b, int ib) {
    return a > b || (a == b && ia < ib);
}

// logits [T, E] -> experts [T, k] (int32, best first) and weights [T, k] = softmax over the k chosen
// logits (in double, as the reference). One warp per token; k <= 32.
extern "C" __global__ void moe_route(const float* __restrict__ logits, int* __restrict__ experts,
                                     float* __restrict__ weights, int E, int k) {
    __shared__ int chosen[32];
    __shared__ float chosen_logit[32];
    const int lane = threadIdx.x & 31, t = blockIdx.x;
    const float* row = logits + (i64)t * E;
    for (int r = 0; r < k; ++r) {
        float best = -__int_as_float(0x7f800000);
        int bi = 0x7fffffff;
        for (int e = lane; e < E; e += 32) {
            bool taken = false;
            for (int j = 0; j < r; ++j) taken |= chosen[j] == e;
            if (!taken && (bi == 0x7fffffff || ranks_before(row[e], e, best, bi))) { best = row[e]; bi = e; }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float v = __shfl_xor_sync(0xffffffffu, best, o);
            const int j = __shfl_xor_sync(0xffffffffu, bi, o);
            if (j != 0x7fffffff && (bi == 0x7fffffff || ranks_before(v, j, best, bi))) { best = v; bi = j; }
        }
        if (lane == 0) { chosen[r] = bi; chosen_logit[r] = best; }
        __syncwarp();
    }
    if (lane < k) {
        double sum = 0.0;
        for (int j = 0; j < k; ++j) sum += exp((double)chosen_logit[j] - (double)chosen_logit[0]);
        experts[(i64)t * k + lane] = chosen[lane];
        weights[(i64)t * k + lane] = (float)(exp((double)chosen_logit[lane] - (double)chosen_logit[0]) / sum);
    }
}

// out[d] = sum_j weights[j] * y[j, d] over the k chosen experts' outputs y [k, D] (one token).
extern "C" __global__ void moe_combine(const float* __restrict__ y, const float* __restrict__ weights,
                                       float* __restrict__ out, int k, int D) {
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < D; d += gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) acc = fmaf(weights[j], y[(i64)j * D + d], acc);
        out[d] = acc;
    }
}
