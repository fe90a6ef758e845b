// Causal attention over the KV cache (prefill and decode; GQA and MHA; sliding window; sinks).
//
// One block per (query token t, head h); its warps split the visible keys and each keeps an
// online softmax (running max m, sum s, weighted values acc); the block then merges the warps,
// adding exp(sink[h]) to the denominator when the model has attention sinks (GPT-OSS).
#include "common.cuh"
#include "vecdot.cuh"

#define ATT_MAX_HEAD_DIM 256
#define ATT_REGS (ATT_MAX_HEAD_DIM / 32)
#define ATT_MAX_WARPS 8

__device__ __forceinline__ float kv_load_f16(const void* p, i64 i) { return f16_bits_to_f32(((const u16*)p)[i]); }
__device__ __forceinline__ float kv_load_f32(const void* p, i64 i) { return ((const float*)p)[i]; }
__device__ __forceinline__ void kv_store_f16(void* p, i64 i, float v) { ((u16*)p)[i] = f32_to_f16_bits(v); }
__device__ __forceinline__ void kv_store_f32(void* p, i64 i, float v) { ((float*)p)[i] = v; }

// q: [T, H, hd] float32; k_new, v_new: [T, KVH, hd] float32, the step's own keys and values;
// k_cache, v_cache: [n_ctx, KVH, hd]; out: [T, H * hd]. The step's tokens sit at positions
// start + t (start = *start_pos_dev when that is not null, else start_pos); query t sees keys
// [lo, start + t], lo = start + t - window + 1 when window > 0. sinks: [H] float32 or null.
// The block of the first head of each KV group also stores its token's k_new/v_new row into the
// cache (no separate store launch); keys at positions >= start are read from k_new/v_new, so no
// block reads a cache row another block of this launch writes.
// xq/xds (not null; T <= 4, hd % 32 == 0): out is also written as the int8 activation blocks of
// the output product (vecdot.cuh's layout, term stride T H hd).
#define DEFINE_ATTENTION(kvt)                                                                     \
extern "C" __global__ void attention_##kvt(const float* __restrict__ q, const float* __restrict__ k_new, \
                                           const float* __restrict__ v_new, void* __restrict__ k_cache, \
                                           void* __restrict__ v_cache, const float* __restrict__ sinks, \
                                           float* __restrict__ out, i8* __restrict__ xq,           \
                                           float4* __restrict__ xds, int terms,                    \
                                           int T, int H, int KVH, int hd,                          \
                                           int start_pos, const int* __restrict__ start_pos_dev,   \
                                           int window, float scale) {                              \
    __shared__ float sm_m[ATT_MAX_WARPS], sm_s[ATT_MAX_WARPS];                                    \
    __shared__ float sm_acc[ATT_MAX_WARPS][ATT_MAX_HEAD_DIM];                                     \
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;        \
    const int t = blockIdx.x / H, h = blockIdx.x % H;                                             \
    const int group = H / KVH, kvh = h / group;                                                   \
    const int start = start_pos_dev ? start_pos_dev[0] : start_pos;                               \
    const int pos = start + t;                                                                    \
    const int lo = window > 0 ? max(0, pos - window + 1) : 0;                                     \
    if (h % group == 0) {                                                                         \
        const float* kn = k_new + ((i64)t * KVH + kvh) * hd;                                      \
        const float* vn = v_new + ((i64)t * KVH + kvh) * hd;                                      \
        const i64 row = ((i64)pos * KVH + kvh) * hd;                                              \
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {                                      \
            kv_store_##kvt(k_cache, row + d, kn[d]);                                              \
            kv_store_##kvt(v_cache, row + d, vn[d]);                                              \
        }                                                                                         \
    }                                                                                             \
    const float* qv = q + ((i64)t * H + h) * hd;                                                  \
    float qr[ATT_REGS], acc[ATT_REGS];                                                            \
    _Pragma("unroll") for (int i = 0; i < ATT_REGS; ++i) {                                        \
        const int d = lane + 32 * i;                                                              \
        qr[i] = d < hd ? qv[d] : 0.0f;                                                            \
        acc[i] = 0.0f;                                                                            \
    }                                                                                             \
    float m = -__int_as_float(0x7f800000), s = 0.0f;                                              \
    for (int j = lo + warp; j <= pos; j += n_warps) {                                             \
        const bool fresh = j >= start;                                                            \
        const i64 base = ((i64)j * KVH + kvh) * hd;                                               \
        const i64 fresh_base = ((i64)(j - start) * KVH + kvh) * hd;                               \
        float dot = 0.0f;                                                                         \
        _Pragma("unroll") for (int i = 0; i < ATT_REGS; ++i) {                                    \
            const int d = lane + 32 * i;                                                          \
            if (d < hd) dot = fmaf(qr[i], fresh ? k_new[fresh_base + d] : kv_load_##kvt(k_cache, base + d), dot); \
        }                                                                                         \
        const float score = warp_sum(dot) * scale;                                                \
        const float m_new = fmaxf(m, score);                                                      \
        const float corr = expf(m - m_new), p = expf(score - m_new);                              \
        s = fmaf(s, corr, p);                                                                     \
        _Pragma("unroll") for (int i = 0; i < ATT_REGS; ++i) {                                    \
            const int d = lane + 32 * i;                                                          \
            if (d < hd) acc[i] = fmaf(acc[i], corr,                                               \
                                      p * (fresh ? v_new[fresh_base + d] : kv_load_##kvt(v_cache, base + d))); \
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
    const i64 o0 = ((i64)t * H + h) * hd;                                                         \
    if (xq) {                                     /* whole warps over blocks of 32 (hd % 32 == 0) */ \
        for (int d0 = 32 * warp; d0 < hd; d0 += 32 * n_warps) {                                   \
            const int d = d0 + lane;                                                              \
            float o = 0.0f;                                                                       \
            for (int w = 0; w < n_warps; ++w) o = fmaf(sm_acc[w][d], expf(sm_m[w] - M), o);       \
            out[o0 + d] = o * inv;                                                                \
            quantize_block_warp(o * inv, xq + o0 + d, (i64)T * H * hd, xds + ((o0 + d0) >> 5), terms); \
        }                                                                                         \
    } else {                                                                                      \
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {                                      \
            float o = 0.0f;                                                                       \
            for (int w = 0; w < n_warps; ++w) o = fmaf(sm_acc[w][d], expf(sm_m[w] - M), o);       \
            out[o0 + d] = o * inv;                                                                \
        }                                                                                         \
    }                                                                                             \
}

DEFINE_ATTENTION(f16)
DEFINE_ATTENTION(f32)
