// Causal attention over the KV cache (prefill and decode; GQA and MHA; sliding window; sinks).
//
// One block per (query token t, head h); its warps split the visible keys and each keeps an
// online softmax (running max m, sum s, weighted values acc); the block then merges the warps,
// adding exp(sink[h]) to the denominator when the model has attention sinks (GPT-OSS).
#include "common.cuh"

#define ATT_MAX_HEAD_DIM 256
#define ATT_REGS (ATT_MAX_HEAD_DIM / 32)
#define ATT_MAX_WARPS 8

__device__ __forceinline__ float kv_load_f16(const void* p, i64 i) { return f16_bits_to_f32(((const u16*)p)[i]); }
__device__ __forceinline__ float kv_load_f32(const void* p, i64 i) { return ((const float*)p)[i]; }
__device__ __forceinline__ void kv_store_f16(void* p, i64 i, float v) { ((u16*)p)[i] = f32_to_f16_bits(v); }
__device__ __forceinline__ void kv_store_f32(void* p, i64 i, float v) { ((float*)p)[i] = v; }

// cache[start * row + i] = src[i] for the n = T * row new values (row = n_kv_heads * head_dim);
// start = *start_pos_dev when given (a captured decode graph reads the position there), else start_pos.
#define DEFINE_KV_STORE(kvt)                                                                      \
extern "C" __global__ void kv_store_##kvt(const float* __restrict__ src, void* cache,             \
                                          const int* __restrict__ start_pos_dev, i64 start_pos, i64 row, i64 n) { \
    const i64 offset = (start_pos_dev ? (i64)start_pos_dev[0] : start_pos) * row;                 \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) \
        kv_store_##kvt(cache, offset + i, src[i]);                                                \
}

// q: [T, H, hd] float32; k_cache, v_cache: [n_ctx, KVH, hd]; out: [T, H * hd].
// Query t sits at position start_pos + t and sees keys [lo, pos], lo = pos - window + 1 when
// window > 0; start_pos is *start_pos_dev when that is not null. sinks: [H] float32 or null.
#define DEFINE_ATTENTION(kvt)                                                                     \
extern "C" __global__ void attention_##kvt(const float* __restrict__ q, const void* __restrict__ k_cache, \
                                           const void* __restrict__ v_cache, const float* __restrict__ sinks, \
                                           float* __restrict__ out, int T, int H, int KVH, int hd,  \
                                           int start_pos, const int* __restrict__ start_pos_dev,   \
                                           int window, float scale) {                              \
    __shared__ float sm_m[ATT_MAX_WARPS], sm_s[ATT_MAX_WARPS];                                    \
    __shared__ float sm_acc[ATT_MAX_WARPS][ATT_MAX_HEAD_DIM];                                     \
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;        \
    const int t = blockIdx.x / H, h = blockIdx.x % H;                                             \
    const int kvh = h / (H / KVH);                                                                \
    const int pos = (start_pos_dev ? start_pos_dev[0] : start_pos) + t;                           \
    const int lo = window > 0 ? max(0, pos - window + 1) : 0;                                     \
    const float* qv = q + ((i64)t * H + h) * hd;                                                  \
    float qr[ATT_REGS], acc[ATT_REGS];                                                            \
    _Pragma("unroll") for (int i = 0; i < ATT_REGS; ++i) {                                        \
        const int d = lane + 32 * i;                                                              \
        qr[i] = d < hd ? qv[d] : 0.0f;                                                            \
        acc[i] = 0.0f;                                                                            \
    }                                                                                             \
    float m = -__int_as_float(0x7f800000), s = 0.0f;                                              \
    for (int j = lo + warp; j <= pos; j += n_warps) {                                             \
        const i64 base = ((i64)j * KVH + kvh) * hd;                                               \
        float dot = 0.0f;                                                                         \
        _Pragma("unroll") for (int i = 0; i < ATT_REGS; ++i) {                                    \
            const int d = lane + 32 * i;                                                          \
            if (d < hd) dot = fmaf(qr[i], kv_load_##kvt(k_cache, base + d), dot);                 \
        }                                                                                         \
        const float score = warp_sum(dot) * scale;                                                \
        const float m_new = fmaxf(m, score);                                                      \
        const float corr = expf(m - m_new), p = expf(score - m_new);                              \
        s = fmaf(s, corr, p);                                                                     \
        _Pragma("unroll") for (int i = 0; i < ATT_REGS; ++i) {                                    \
            const int d = lane + 32 * i;                                                          \
            if (d < hd) acc[i] = fmaf(acc[i], corr, p * kv_load_##kvt(v_cache, base + d));        \
        }                                                                                         \
        m = m_new;                                                                                \
    }                                                                                             \
    if (lane == 0) { sm_m[warp] = m; sm_s[warp] = s; }                                            \
    _Pragma("unroll") for (int i = 0; i < ATT_REGS; ++i) {                                        \
        const int d = lane + 32 * i;                                                              \
        if (d < hd) sm_acc[warp][d] = acc[i];                                                     \
    }                                                                                             \
    __syncthreads();                                                                              \
    float M = sinks ? sinks[h] : -__int_as_float(0x7f800000);                                     \
    for (int w = 0; w < n_warps; ++w) M = fmaxf(M, sm_m[w]);                                      \
    float S = sinks ? expf(sinks[h] - M) : 0.0f;                                                  \
    for (int w = 0; w < n_warps; ++w) S += sm_s[w] * expf(sm_m[w] - M);                           \
    const float inv = 1.0f / S;                                                                   \
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {                                          \
        float o = 0.0f;                                                                           \
        for (int w = 0; w < n_warps; ++w) o = fmaf(sm_acc[w][d], expf(sm_m[w] - M), o);           \
        out[((i64)t * H + h) * hd + d] = o * inv;                                                 \
    }                                                                                             \
}

DEFINE_KV_STORE(f16)
DEFINE_KV_STORE(f32)
DEFINE_ATTENTION(f16)
DEFINE_ATTENTION(f32)
