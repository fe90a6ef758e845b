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

// ---- prefill (T >= 2 tokens): experts grouped on the device -------------------------------------
// The T*k (token, slot) pairs, pair p = t*k + j, are sorted by expert (moe_plan), each expert's pairs
// cut into tiles of tile_rows sorted rows, which moe_gemm.cu's grouped products multiply with that
// expert's weights; moe_combine_rows sums each token's k rows back. Sizes depend only on T, k and E
// (no host round trip, no allocation that depends on the routing): a CUDA graph can capture it.
#define MOE_PLAN_THREADS 1024   // the plan's block (a warp count of 32 at most)
#define MOE_MAX_EXPERTS 256     // experts the plan's shared tables hold

// experts [n_pairs] (pair p's expert) -> order [n_pairs]: the pairs sorted by expert, stable (pairs
// of one expert in pair order); pos[p]: where pair p sits in order; tiles [max_tiles][4] =
// (expert, first sorted row, rows, 0): each expert's run cut into tiles of tile_rows rows, experts
// in id order; entries past the last tile have rows = 0. One block of blockDim.x (a multiple of 32,
// at most MOE_PLAN_THREADS) threads; max_tiles >= ceil(n_pairs / tile_rows) + E (the launcher's).
extern "C" __global__ void moe_plan(const int* __restrict__ experts, int* __restrict__ order, int* __restrict__ pos,
                                    int* __restrict__ tiles, int n_pairs, int E, int tile_rows, int max_tiles) {
    __shared__ int next_row[MOE_MAX_EXPERTS];                 // counts, then each expert's next sorted row
    __shared__ int tile_start[MOE_MAX_EXPERTS + 1];
    __shared__ int chunk_expert[MOE_PLAN_THREADS];
    __shared__ int warp_count[MOE_PLAN_THREADS / 32][MOE_MAX_EXPERTS];   // pairs of each expert a warp holds
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, n_warps = blockDim.x >> 5;
    for (int e = tid; e < E; e += blockDim.x) next_row[e] = 0;
    __syncthreads();
    for (int p = tid; p < n_pairs; p += blockDim.x) atomicAdd(&next_row[experts[p]], 1);
    __syncthreads();
    if (tid == 0) {                                           // E <= 256: a serial scan costs nothing
        int row = 0, tile = 0;
        for (int e = 0; e < E; ++e) {
            const int count = next_row[e];
            next_row[e] = row;
            tile_start[e] = tile;
            row += count;
            tile += (count + tile_rows - 1) / tile_rows;
        }
        tile_start[E] = tile;
    }
    __syncthreads();
    for (int e = tid; e < E; e += blockDim.x) {
        const int first = next_row[e], count = (e + 1 < E ? next_row[e + 1] : n_pairs) - first;
        for (int i = 0; i * tile_rows < count; ++i) {
            int* t = tiles + 4 * (tile_start[e] + i);
            t[0] = e;
            t[1] = first + i * tile_rows;
            t[2] = min(tile_rows, count - i * tile_rows);
            t[3] = 0;
        }
    }
    for (int i = tile_start[E] + tid; i < max_tiles; i += blockDim.x) {
        int* t = tiles + 4 * i;
        t[0] = 0; t[1] = 0; t[2] = 0; t[3] = 0;
    }
    // Stable placement, a chunk of blockDim.x pairs at a time: a pair's rank among its expert's pairs of
    // the chunk is the count in earlier warps (warp_count) plus the count earlier in its own warp.
    for (int base = 0; base < n_pairs; base += blockDim.x) {
        const int p = base + tid;
        const int e = p < n_pairs ? experts[p] : -1;
        chunk_expert[tid] = e;
        for (int x = lane; x < E; x += 32) warp_count[warp][x] = 0;
        __syncthreads();
        int rank = 0;
        bool last = e >= 0;
        for (int j = tid - lane; j < tid - lane + 32; ++j) {
            if (j < tid) rank += chunk_expert[j] == e;
            else if (j > tid && chunk_expert[j] == e) last = false;
        }
        if (last) warp_count[warp][e] = rank + 1;
        __syncthreads();
        if (e >= 0) {
            int row = next_row[e] + rank;
            for (int w = 0; w < warp; ++w) row += warp_count[w][e];
            order[row] = p;
            pos[p] = row;
        }
        __syncthreads();
        for (int x = tid; x < E; x += blockDim.x) {
            int sum = 0;
            for (int w = 0; w < n_warps; ++w) sum += warp_count[w][x];
            next_row[x] += sum;
        }
        __syncthreads();
    }
}

// out[t, d] = sum_j weights[t, j] * y[pos[t*k + j], d] (j in rank order): each token's k expert rows,
// sorted by expert in y [T*k, D], summed back. One block a token.
extern "C" __global__ void moe_combine_rows(const float* __restrict__ y, const int* __restrict__ pos,
                                            const float* __restrict__ weights, float* __restrict__ out,
                                            int k, int D) {
    const int t = blockIdx.x;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < k; ++j) acc = fmaf(weights[(i64)t * k + j], y[(i64)pos[(i64)t * k + j] * D + d], acc);
        out[(i64)t * D + d] = acc;
    }
}
