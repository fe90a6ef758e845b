// Causal attention over the KV cache (GQA and MHA; sliding window; sinks; optional fused RoPE).
//
// attention_prefill_<kvt> (any T): tiled flash attention. A block takes BQ queries of one head,
//   walks the visible keys in tiles of BK (K and V staged in shared memory as float32) and keeps
//   an online softmax per query; all arithmetic is float32. The grid is 1-D: query tiles x heads.
// attention_decode_<kvt> (T <= 4): flash decoding. The visible keys are split into chunks, one
//   block per (chunk, head); a lane scores one key at a time against every query of the step.
//   Each block leaves its partial softmax (max, sum, weighted values) in a workspace; the last
//   block of a head (an atomic ticket after __threadfence) merges them and writes the output, so
//   a decode step needs one launch.
//
// Common arguments. q: [T, H, hd] float32; k_new, v_new: [T, KVH, hd] float32, the step's own
// keys and values; k_cache, v_cache: [n_ctx, KVH, hd] (float16 or float32); out: [T, H * hd].
// The step's tokens sit at positions start + t (start = *start_pos_dev when that is not null, else
// start_pos); query t sees keys [lo, start + t], lo = start + t - window + 1 when window > 0.
// sinks: [H] float32 or null. scale_log2: the score scale times log2(e) (scores live in base 2).
// rope_cos, rope_sin: [positions, rope_dim / 2] tables or null (no RoPE); with them, q and the
// step's keys are rotated here (rope_neox: pairs (i, i + dim/2), else (2i, 2i+1)); dimensions
// >= rope_dim pass through. Keys at positions >= start are read from k_new/v_new (rotated on the
// fly), so no block reads a cache row that another block of the same launch writes; the blocks
// of the first head of each KV group store the step's rows (rotated keys) into the cache.
#include "common.cuh"
#include "vecdot.cuh"

#define ATT_MAX_HEAD_DIM 256
#define ATT_DECODE_MAX_T 4
#define ATT_DECODE_WARPS 4
#define ATT_MAX_SPLITS 32
#define ATT_LOG2E 1.4426950408889634f

// -- cache element access ------------------------------------------------------------------------

template <bool F16> __device__ __forceinline__ float kv_load(const void* p, i64 i) {
    if constexpr (F16) return f16_bits_to_f32(((const u16*)p)[i]);
    else return ((const float*)p)[i];
}

template <bool F16> __device__ __forceinline__ void kv_store(void* p, i64 i, float v) {
    if constexpr (F16) ((u16*)p)[i] = f32_to_f16_bits(v);
    else ((float*)p)[i] = v;
}

__device__ __forceinline__ void halves2(u32 w, float* o) {
    o[0] = f16_bits_to_f32((u16)(w & 0xffffu));
    o[1] = f16_bits_to_f32((u16)(w >> 16));
}

// N consecutive cache values from element i (N in 2, 4, 8; i a multiple of N).
template <bool F16, int N> __device__ __forceinline__ void kv_load_n(const void* p, i64 i, float* o) {
    if constexpr (F16) {
        const u16* h = (const u16*)p + i;
        if constexpr (N == 2) {
            halves2(*(const u32*)h, o);
        } else if constexpr (N == 4) {
            const uint2 w = *(const uint2*)h;
            halves2(w.x, o); halves2(w.y, o + 2);
        } else {
            const uint4 w = *(const uint4*)h;
            halves2(w.x, o); halves2(w.y, o + 2); halves2(w.z, o + 4); halves2(w.w, o + 6);
        }
    } else {
        const float* f = (const float*)p + i;
        if constexpr (N == 2) {
            const float2 w = *(const float2*)f;
            o[0] = w.x; o[1] = w.y;
        } else {
            _Pragma("unroll") for (int u = 0; u < N / 4; ++u) {
                const float4 w = ((const float4*)f)[u];
                o[4 * u] = w.x; o[4 * u + 1] = w.y; o[4 * u + 2] = w.z; o[4 * u + 3] = w.w;
            }
        }
    }
}

// Element d of a head vector `row` (float32) at position pos, rotated as rope.cu rotates it.
__device__ __forceinline__ float rope_elem(const float* row, int d, int pos, const float* __restrict__ cos_t,
                                           const float* __restrict__ sin_t, int rope_dim, int neox) {
    const float x = row[d];
    if (!cos_t || d >= rope_dim) return x;
    const int half = rope_dim >> 1;
    const bool first = neox ? d < half : (d & 1) == 0;
    const int pair = neox ? (first ? d : d - half) : d >> 1;
    const int partner = neox ? (first ? d + half : d - half) : d ^ 1;
    const float c = cos_t[(i64)pos * half + pair], s = sin_t[(i64)pos * half + pair];
    const float y = row[partner];
    return first ? x * c - y * s : y * s + x * c;    // the same expressions as rope.cu (a, b = x, y)
}

struct AttentionArgs {
    const float* q; const float* k_new; const float* v_new;
    void* k_cache; void* v_cache;
    const float* sinks; float* out;
    const float* rope_cos; const float* rope_sin; int rope_dim; int rope_neox;
    int T, H, KVH, hd, start, window;
    float scale_log2;
};

// Store the step's rows t in [t0, t1) of KV head kvh (keys rotated), threads of the block sharing the work.
template <bool F16> __device__ void store_step_rows(const AttentionArgs& a, int kvh, int t0, int t1) {
    const int n = (t1 - t0) * a.hd;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const int t = t0 + e / a.hd, d = e % a.hd, pos = a.start + t;
        const i64 src = ((i64)t * a.KVH + kvh) * a.hd;
        const i64 dst = ((i64)pos * a.KVH + kvh) * a.hd + d;
        kv_store<F16>(a.k_cache, dst, rope_elem(a.k_new + src, d, pos, a.rope_cos, a.rope_sin, a.rope_dim, a.rope_neox));
        kv_store<F16>(a.v_cache, dst, a.v_new[src + d]);
    }
}

__device__ __forceinline__ bool key_visible(int j, int qpos, int window) {
    return j <= qpos && (window <= 0 || j > qpos - window);
}

// -- prefill: tiled flash attention ------------------------------------------------------------------
//
// Thread (tq, tc) of NT: queries 4 tq .. 4 tq + 3 of the tile; in the score step keys tc*KPT ..
// (tc+1)*KPT - 1, in the value step dimensions 4 tc + 4 TC u + e (u < DPT/4, e < 4: each group
// of TC lanes reads consecutive float4s). Shared memory: Q^T [HD][BQ] (scaled, rotated), then one
// buffer for K^T [HD][BK] and V [BK][HD] in turn, and P^T [BK][BQ].

// Element d of the key (KEY) or value at position pos of KV head kvh; 0 past k_end or hd. Keys of the
// step (pos >= start) come from k_new, rotated; values from v_new.
template <bool F16, bool KEY>
__device__ __forceinline__ float tile_elem(const AttentionArgs& a, int kvh, int pos, int d, int k_end) {
    if (pos >= k_end || d >= a.hd) return 0.0f;
    if (pos >= a.start) {
        const i64 row = ((i64)(pos - a.start) * a.KVH + kvh) * a.hd;
        return KEY ? rope_elem(a.k_new + row, d, pos, a.rope_cos, a.rope_sin, a.rope_dim, a.rope_neox)
                   : a.v_new[row + d];
    }
    return kv_load<F16>(KEY ? a.k_cache : a.v_cache, ((i64)pos * a.KVH + kvh) * a.hd + d);
}

// A BK x HD tile from position k0, thread tid taking elements tid + NT u, handed to store(j, d, x).
// Loaded in groups of 8 a thread, all of a group's loads in flight before any is stored.
template <bool F16, bool KEY, int HD, int BK, int NT, typename Store>
__device__ __forceinline__ void load_tile(const AttentionArgs& a, int kvh, int k0, int k_end, Store store) {
    constexpr int ITEMS = BK * HD / NT, GROUP = ITEMS < 8 ? ITEMS : 8;
    static_assert(ITEMS * NT == BK * HD && ITEMS % GROUP == 0, "tile load shape");
    _Pragma("unroll 1") for (int g = 0; g < ITEMS; g += GROUP) {
        float x[GROUP];
        _Pragma("unroll") for (int u = 0; u < GROUP; ++u) {
            const int e = threadIdx.x + (g + u) * NT;
            x[u] = tile_elem<F16, KEY>(a, kvh, k0 + e / HD, e % HD, k_end);
        }
        _Pragma("unroll") for (int u = 0; u < GROUP; ++u) {
            const int e = threadIdx.x + (g + u) * NT;
            store(e / HD, e % HD, x[u]);
        }
    }
}

template <int HD, int BQ, int BK> struct PrefillSmem {
    static constexpr int QP = BQ + 4, KP = BK + 4, VP = HD + 4;
    static constexpr int KV = HD * KP > BK * VP ? HD * KP : BK * VP;
    static constexpr int FLOATS = HD * QP + KV + BK * QP;
};

template <bool F16, int HD, int BQ, int BK, int NT>
__device__ void attention_prefill_tile(const AttentionArgs& a, float* smem) {
    using S = PrefillSmem<HD, BQ, BK>;
    constexpr int TQ = BQ / 4, TC = NT / TQ, KPT = BK / TC, DPT = HD / TC;
    static_assert(TQ * TC == NT && KPT * TC == BK && DPT * TC == HD && DPT % 4 == 0 && TC <= 32, "tile shape");
    float* qs = smem;                                   // [HD][QP]
    float* kv = qs + HD * S::QP;                        // K^T [HD][KP], then V [BK][VP]
    float* ps = kv + S::KV;                             // [BK][QP]
    const int tid = threadIdx.x, tq = tid / TC, tc = tid % TC;
    // Blocks in order of decreasing work (all heads' tiles of the last queries first), so
    // that the block scheduler spreads long and short tiles evenly over the SMs.
    const int h = blockIdx.x % a.H, group = a.H / a.KVH, kvh = h / group;
    const int t0 = (gridDim.x / a.H - 1 - blockIdx.x / a.H) * BQ;
    const int t1 = min(a.T, t0 + BQ);
    if (h % group == 0) store_step_rows<F16>(a, kvh, t0, t1);

    for (int e = tid; e < BQ * HD; e += NT) {
        const int i = e / HD, d = e % HD, t = t0 + i;
        float x = 0.0f;
        if (t < a.T && d < a.hd)
            x = rope_elem(a.q + ((i64)t * a.H + h) * a.hd, d, a.start + t, a.rope_cos, a.rope_sin, a.rope_dim,
                          a.rope_neox) * a.scale_log2;
        qs[d * S::QP + i] = x;
    }
    const int k_lo = a.window > 0 ? max(0, a.start + t0 - a.window + 1) : 0;
    const int k_end = a.start + t1;                     // keys [k_lo, k_end)
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m[4], l[4], o[4][DPT];
    _Pragma("unroll") for (int r = 0; r < 4; ++r) {
        m[r] = NEG_INF; l[r] = 0.0f;
        _Pragma("unroll") for (int c = 0; c < DPT; ++c) o[r][c] = 0.0f;
    }
    for (int k0 = k_lo; k0 < k_end; k0 += BK) {
        __syncthreads();                                // the previous tile's V and P are read
        load_tile<F16, true, HD, BK, NT>(a, kvh, k0, k_end, [&](int j, int d, float x) { kv[d * S::KP + j] = x; });
        __syncthreads();
        float s[4][KPT];
        _Pragma("unroll") for (int r = 0; r < 4; ++r)
            _Pragma("unroll") for (int c = 0; c < KPT; ++c) s[r][c] = 0.0f;
        const int d_end = (a.hd + 7) & ~7;              // the class's padding dimensions are zero: skip them
        _Pragma("unroll 8") for (int d = 0; d < d_end; ++d) {
            const float4 qv = *(const float4*)(qs + d * S::QP + 4 * tq);
            const float qr[4] = {qv.x, qv.y, qv.z, qv.w};
            float kr[KPT];
            const float* kd = kv + d * S::KP + tc * KPT;
            if constexpr (KPT % 4 == 0) {
                _Pragma("unroll") for (int c = 0; c < KPT; c += 4) {
                    const float4 w = *(const float4*)(kd + c);
                    kr[c] = w.x; kr[c + 1] = w.y; kr[c + 2] = w.z; kr[c + 3] = w.w;
                }
            } else if constexpr (KPT == 2) {
                const float2 w = *(const float2*)kd;
                kr[0] = w.x; kr[1] = w.y;
            } else {
                _Pragma("unroll") for (int c = 0; c < KPT; ++c) kr[c] = kd[c];
            }
            _Pragma("unroll") for (int r = 0; r < 4; ++r)
                _Pragma("unroll") for (int c = 0; c < KPT; ++c) s[r][c] = fmaf(qr[r], kr[c], s[r][c]);
        }
        float p[4][KPT];
        _Pragma("unroll") for (int r = 0; r < 4; ++r) {
            const int qpos = a.start + t0 + 4 * tq + r;
            float mx = NEG_INF;
            _Pragma("unroll") for (int c = 0; c < KPT; ++c) {
                const int j = k0 + tc * KPT + c;
                s[r][c] = j < k_end && key_visible(j, qpos, a.window) ? s[r][c] : NEG_INF;
                mx = fmaxf(mx, s[r][c]);
            }
            _Pragma("unroll") for (int off = TC / 2; off > 0; off >>= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float m_new = fmaxf(m[r], mx);
            const bool none = m_new == NEG_INF;         // no visible key so far
            const float corr = none ? 1.0f : exp2f(m[r] - m_new);
            float sum = 0.0f;
            _Pragma("unroll") for (int c = 0; c < KPT; ++c) {
                p[r][c] = none ? 0.0f : exp2f(s[r][c] - m_new);
                sum += p[r][c];
            }
            l[r] = fmaf(l[r], corr, sum);
            m[r] = m_new;
            _Pragma("unroll") for (int c = 0; c < DPT; ++c) o[r][c] *= corr;
        }
        _Pragma("unroll") for (int c = 0; c < KPT; ++c)
            *(float4*)(ps + (tc * KPT + c) * S::QP + 4 * tq) = make_float4(p[0][c], p[1][c], p[2][c], p[3][c]);
        __syncthreads();                                // K^T is read: the buffer takes V
        load_tile<F16, false, HD, BK, NT>(a, kvh, k0, k_end, [&](int j, int d, float x) { kv[j * S::VP + d] = x; });
        __syncthreads();
        _Pragma("unroll 4") for (int j = 0; j < BK; ++j) {
            const float4 pv = *(const float4*)(ps + j * S::QP + 4 * tq);
            const float pr[4] = {pv.x, pv.y, pv.z, pv.w};
            _Pragma("unroll") for (int u = 0; u < DPT / 4; ++u) {
                const float4 vv = *(const float4*)(kv + j * S::VP + 4 * tc + 4 * TC * u);
                _Pragma("unroll") for (int r = 0; r < 4; ++r) {
                    o[r][4 * u] = fmaf(pr[r], vv.x, o[r][4 * u]);
                    o[r][4 * u + 1] = fmaf(pr[r], vv.y, o[r][4 * u + 1]);
                    o[r][4 * u + 2] = fmaf(pr[r], vv.z, o[r][4 * u + 2]);
                    o[r][4 * u + 3] = fmaf(pr[r], vv.w, o[r][4 * u + 3]);
                }
            }
        }
    }
    const float sink = a.sinks ? a.sinks[h] * ATT_LOG2E : NEG_INF;
    _Pragma("unroll") for (int r = 0; r < 4; ++r) {
        float sum = l[r];
        _Pragma("unroll") for (int off = TC / 2; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        const int t = t0 + 4 * tq + r;
        if (t >= a.T) continue;
        const float M = fmaxf(m[r], sink);              // a sink adds exp(sink) to the denominator only
        const float f = exp2f(m[r] - M);
        const float inv = f / fmaf(sum, f, a.sinks ? exp2f(sink - M) : 0.0f);
        float* y = a.out + ((i64)t * a.H + h) * a.hd;
        _Pragma("unroll") for (int u = 0; u < DPT / 4; ++u)
            _Pragma("unroll") for (int e = 0; e < 4; ++e) {
                const int d = 4 * tc + 4 * TC * u + e;
                if (d < a.hd) y[d] = o[r][4 * u + e] * inv;
            }
    }
}

// Tile shapes by head-dimension class (static shared memory stays under 48 KiB):
//   hd <= 64: 64 queries x 32 keys, 128 threads (32 x 32 for shorter inputs: twice the blocks, where
//   the longer tile would leave SMs idle); hd <= 128: 32 x 32, 128; hd <= 256: 16 x 16, 64.

// -- decode: split keys, merged by the last block --------------------------------------------------
//
// Lane-per-key scoring: a warp takes 32 consecutive keys, each lane reads its key's row and dots it
// with the (up to 4) queries held in shared memory; the values are then read lane-per-dimension
// (VPL = HD/32 consecutive dimensions a lane) with the weights broadcast by shuffles.
// partials: per (head, split, token) [max, sum, weighted values (hd)]; counters: [H] int32 tickets,
// zero between launches (the merging block resets its head's).

template <bool F16, int HD, int MT>          // MT: the most tokens this instance takes (1, or up to 4)
__device__ void attention_decode_chunk(const AttentionArgs& a, float* part, int* counters, i8* xq, float4* xds,
                                       int terms, float* smem) {
    constexpr int VPL = HD / 32, NW = ATT_DECODE_WARPS;
    float* qs = smem;                                   // [MT][HD] queries, rotated and scaled
    float* kn = qs + MT * HD;                           // [MT][HD] the step's keys, rotated
    float* wm = kn + MT * HD;                           // [NW][MT]
    float* wl = wm + NW * MT;                           // [NW][MT]
    float* wo = wl + NW * MT;                           // [NW][MT][HD]; then the merge's weights
    __shared__ int last_block;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int split = blockIdx.x, n_splits = gridDim.x;
    const int h = blockIdx.y, group = a.H / a.KVH, kvh = h / group;
    const int T = a.T, hd = a.hd, start = a.start;
    const int lo = a.window > 0 ? max(0, start - a.window + 1) : 0;   // the lowest key query 0 sees
    const int end = start + T;
    const int n_keys = end - lo;
    // Chunks of whole warps' worth of keys, at least one per warp: short contexts use fewer splits.
    const int chunk = max(32 * NW, ((n_keys + n_splits - 1) / n_splits + 31) & ~31);
    const int n_active = (n_keys + chunk - 1) / chunk;
    if (split == 0 && h % group == 0) store_step_rows<F16>(a, kvh, 0, T);
    if (split >= n_active) return;
    const int c0 = lo + split * chunk, c1 = min(end, c0 + chunk);

    // The queries and the step's own keys, staged once by the whole block (a lane reading its fresh
    // key element by element would stall its warp for a memory latency per element).
    for (int e = threadIdx.x; e < MT * HD; e += blockDim.x) {
        const int t = e / HD, d = e % HD;
        const bool in = t < T && d < hd;
        qs[e] = in ? rope_elem(a.q + ((i64)t * a.H + h) * hd, d, start + t, a.rope_cos, a.rope_sin, a.rope_dim,
                               a.rope_neox) * a.scale_log2
                   : 0.0f;
        kn[e] = in ? rope_elem(a.k_new + ((i64)t * a.KVH + kvh) * hd, d, start + t, a.rope_cos, a.rope_sin,
                               a.rope_dim, a.rope_neox)
                   : 0.0f;
    }
    __syncthreads();
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m[MT], l[MT], acc[MT][VPL];
    _Pragma("unroll") for (int t = 0; t < MT; ++t) {
        m[t] = NEG_INF; l[t] = 0.0f;
        _Pragma("unroll") for (int i = 0; i < VPL; ++i) acc[t][i] = 0.0f;
    }
    const bool lane_dims = lane * VPL < hd;             // this lane holds output dimensions
    for (int base = c0 + 32 * warp; base < c1; base += 32 * NW) {
        const int j = base + lane;
        float s[MT];
        _Pragma("unroll") for (int t = 0; t < MT; ++t) s[t] = 0.0f;
        if (j < c1) {
            const bool fresh = j >= start;              // the step's own key, from shared memory
            const float* kf = kn + (fresh ? j - start : 0) * HD;
            const i64 row = ((i64)j * a.KVH + kvh) * hd;
            _Pragma("unroll") for (int d0 = 0; d0 < HD; d0 += 8) {
                if (d0 < hd) {
                    float x[8];
                    if (fresh) {
                        _Pragma("unroll") for (int e = 0; e < 8; ++e) x[e] = kf[d0 + e];
                    } else {
                        kv_load_n<F16, 8>(a.k_cache, row + d0, x);
                    }
                    _Pragma("unroll") for (int t = 0; t < MT; ++t)
                        _Pragma("unroll") for (int e = 0; e < 8; ++e) s[t] = fmaf(qs[t * HD + d0 + e], x[e], s[t]);
                }
            }
        }
        float p[MT];
        _Pragma("unroll") for (int t = 0; t < MT; ++t) {
            const float st = j < c1 && t < T && key_visible(j, start + t, a.window) ? s[t] : NEG_INF;
            const float m_new = fmaxf(m[t], warp_max(st));
            const bool none = m_new == NEG_INF;
            const float corr = none ? 1.0f : exp2f(m[t] - m_new);
            p[t] = none ? 0.0f : exp2f(st - m_new);
            l[t] = fmaf(l[t], corr, warp_sum(p[t]));
            m[t] = m_new;
            _Pragma("unroll") for (int i = 0; i < VPL; ++i) acc[t][i] *= corr;
        }
        // Values: a batch of KB keys' rows loaded before any is used (one memory latency a batch).
        constexpr int KB = HD <= 128 ? 16 : 8;
        const int n = min(32, c1 - base);
        for (int k0 = 0; k0 < n; k0 += KB) {
            float v[KB][VPL];
            _Pragma("unroll") for (int u = 0; u < KB; ++u) {
                const int jj = base + k0 + u;
                if (!lane_dims || k0 + u >= n) {
                    _Pragma("unroll") for (int i = 0; i < VPL; ++i) v[u][i] = 0.0f;
                } else if (jj >= start) {
                    const float* vn = a.v_new + ((i64)(jj - start) * a.KVH + kvh) * hd + lane * VPL;
                    _Pragma("unroll") for (int i = 0; i < VPL; ++i) v[u][i] = vn[i];
                } else {
                    kv_load_n<F16, VPL>(a.v_cache, ((i64)jj * a.KVH + kvh) * hd + lane * VPL, v[u]);
                }
            }
            _Pragma("unroll") for (int u = 0; u < KB; ++u)
                _Pragma("unroll") for (int t = 0; t < MT; ++t) {
                    const float pk = __shfl_sync(0xffffffffu, p[t], k0 + u);
                    _Pragma("unroll") for (int i = 0; i < VPL; ++i) acc[t][i] = fmaf(pk, v[u][i], acc[t][i]);
                }
        }
    }
    // Merge the warps of the block.
    _Pragma("unroll") for (int t = 0; t < MT; ++t) {
        if (lane == 0) { wm[warp * MT + t] = m[t]; wl[warp * MT + t] = l[t]; }
        _Pragma("unroll") for (int i = 0; i < VPL; ++i) wo[(warp * MT + t) * HD + lane * VPL + i] = acc[t][i];
    }
    __syncthreads();
    const float sink = a.sinks ? a.sinks[h] * ATT_LOG2E : NEG_INF;
    const int stride = hd + 2;                          // one partial: max, sum, values
    if (n_active > 1) {
        for (int e = threadIdx.x; e < T * stride; e += blockDim.x) {
            const int t = e / stride, c = e % stride;
            float M = NEG_INF;
            for (int w = 0; w < NW; ++w) M = fmaxf(M, wm[w * MT + t]);
            float x = 0.0f;
            if (c == 0) {
                x = M;
            } else {
                for (int w = 0; w < NW; ++w) {
                    const float mw = wm[w * MT + t];
                    const float f = mw == NEG_INF ? 0.0f : exp2f(mw - M);
                    x = fmaf(c == 1 ? wl[w * MT + t] : wo[(w * MT + t) * HD + c - 2], f, x);
                }
            }
            part[(((i64)h * n_splits + split) * T + t) * stride + c] = x;
        }
        __threadfence();                                // the partial is visible before the ticket
        __syncthreads();
        if (threadIdx.x == 0) last_block = atomicAdd(counters + h, 1) == n_active - 1;
        __syncthreads();
        if (!last_block) return;
        __threadfence();
        if (threadIdx.x == 0) counters[h] = 0;          // ready for the next launch
    }
    // Final: out = sum_s f_s O_s / (sum_s f_s l_s + exp(sink - M)), f_s = exp(m_s - M), over the parts:
    // the splits' partials, or this block's warps. The weights f_s are computed once a token.
    const bool split_parts = n_active > 1;
    const int n_parts = split_parts ? n_active : NW;
    float* pf = wo + NW * MT * HD;                      // [ATT_MAX_SPLITS][MT]: m_s, then f_s
    float* pl = pf + ATT_MAX_SPLITS * MT;               // [ATT_MAX_SPLITS][MT]: l_s
    float* pden = pl + ATT_MAX_SPLITS * MT;             // [MT]
    const float* pbase = part + (i64)h * n_splits * T * stride;
    for (int e = threadIdx.x; e < n_parts * T; e += blockDim.x) {
        const int sp = e / T, t = e % T;
        pf[sp * MT + t] = split_parts ? __ldcg(pbase + ((i64)sp * T + t) * stride) : wm[sp * MT + t];
        pl[sp * MT + t] = split_parts ? __ldcg(pbase + ((i64)sp * T + t) * stride + 1) : wl[sp * MT + t];
    }
    __syncthreads();
    if (threadIdx.x < T) {
        const int t = threadIdx.x;
        float M = sink;
        for (int sp = 0; sp < n_parts; ++sp) M = fmaxf(M, pf[sp * MT + t]);
        float den = a.sinks ? exp2f(sink - M) : 0.0f;
        for (int sp = 0; sp < n_parts; ++sp) {
            const float ms = pf[sp * MT + t];
            const float f = ms == NEG_INF ? 0.0f : exp2f(ms - M);
            pf[sp * MT + t] = f;
            den = fmaf(pl[sp * MT + t], f, den);
        }
        pden[t] = den;
    }
    __syncthreads();
    auto combine = [&](int t, int d) -> float {
        float num = 0.0f;
        if (split_parts) {
            _Pragma("unroll 8") for (int sp = 0; sp < n_parts; ++sp)
                num = fmaf(__ldcg(pbase + ((i64)sp * T + t) * stride + 2 + d), pf[sp * MT + t], num);
        } else {
            _Pragma("unroll") for (int w = 0; w < NW; ++w) num = fmaf(wo[(w * MT + t) * HD + d], pf[w * MT + t], num);
        }
        return num / pden[t];
    };
    if (xq) {                                           // whole warps over blocks of 32 (hd % 32 == 0)
        const int blocks = hd >> 5;
        for (int b = warp; b < T * blocks; b += NW) {
            const int t = b / blocks, d0 = (b % blocks) * 32, d = d0 + lane;
            const i64 o0 = ((i64)t * a.H + h) * hd;
            const float y = combine(t, d);
            a.out[o0 + d] = y;
            quantize_block_warp(y, xq + o0 + d, (i64)T * a.H * hd, xds + ((o0 + d0) >> 5), terms);
        }
    } else {
        for (int e = threadIdx.x; e < T * hd; e += blockDim.x) {
            const int t = e / hd, d = e % hd;
            a.out[((i64)t * a.H + h) * hd + d] = combine(t, d);
        }
    }
}

template <int HD> struct DecodeSmem {
    static constexpr int FLOATS = 2 * ATT_DECODE_MAX_T * HD + 2 * ATT_DECODE_WARPS * ATT_DECODE_MAX_T
                                  + ATT_DECODE_WARPS * ATT_DECODE_MAX_T * HD + (2 * ATT_MAX_SPLITS + 1) * ATT_DECODE_MAX_T;
};

// -- entry points ------------------------------------------------------------------------------------
// Per cache type: a prefill kernel a head-dimension class (64, 128 or 256: the smallest that holds
// hd; kernels/attention.py picks), and one decode kernel that picks the class (and one token or up
// to four) inside, all of them sharing one static shared buffer.

#define ATTENTION_PARAMS                                                                          \
    const float* __restrict__ q, const float* __restrict__ k_new, const float* __restrict__ v_new,   \
    void* __restrict__ k_cache, void* __restrict__ v_cache, const float* __restrict__ sinks,         \
    float* __restrict__ out, const float* __restrict__ rope_cos, const float* __restrict__ rope_sin, \
    int rope_dim, int rope_neox, int T, int H, int KVH, int hd, int start_pos,                       \
    const int* __restrict__ start_pos_dev, int window, float scale_log2

#define ATTENTION_ARGS_INIT                                                                       \
    AttentionArgs a{q, k_new, v_new, k_cache, v_cache, sinks, out, rope_cos, rope_sin, rope_dim,     \
                    rope_neox, T, H, KVH, hd, start_pos_dev ? start_pos_dev[0] : start_pos, window,  \
                    scale_log2}

// One prefill kernel a head-dimension class, so that a larger class's registers do not lower the
// occupancy of a smaller one.
#define DEFINE_PREFILL(name, F16, HD, BQ, BK, NT)                                                 \
extern "C" __global__ void name(ATTENTION_PARAMS) {                                               \
    __shared__ float4 smem4[(PrefillSmem<HD, BQ, BK>::FLOATS + 3) / 4];                           \
    ATTENTION_ARGS_INIT;                                                                          \
    attention_prefill_tile<F16, HD, BQ, BK, NT>(a, (float*)smem4);                                \
}

#define DEFINE_ATTENTION(kvt, F16)                                                                \
DEFINE_PREFILL(attention_prefill_##kvt, F16, 64, 64, 32, 128)                                     \
DEFINE_PREFILL(attention_prefill_q32_##kvt, F16, 64, 32, 32, 128)                                 \
DEFINE_PREFILL(attention_prefill_d128_##kvt, F16, 128, 32, 32, 128)                               \
DEFINE_PREFILL(attention_prefill_d256_##kvt, F16, 256, 16, 16, 64)                                \
extern "C" __global__ void                                                                      \
attention_decode_##kvt(ATTENTION_PARAMS, float* __restrict__ part, int* __restrict__ counters,    \
                       i8* __restrict__ xq, float4* __restrict__ xds, int terms) {                \
    __shared__ float4 smem4[(DecodeSmem<256>::FLOATS + 3) / 4];                                   \
    ATTENTION_ARGS_INIT;                                                                          \
    float* sm = (float*)smem4;                                                                    \
    if (T == 1) {                                 /* a decode step: no work for absent tokens */   \
        if (hd <= 64) attention_decode_chunk<F16, 64, 1>(a, part, counters, xq, xds, terms, sm);   \
        else if (hd <= 128) attention_decode_chunk<F16, 128, 1>(a, part, counters, xq, xds, terms, sm); \
        else attention_decode_chunk<F16, 256, 1>(a, part, counters, xq, xds, terms, sm);           \
    } else {                                                                                      \
        if (hd <= 64) attention_decode_chunk<F16, 64, ATT_DECODE_MAX_T>(a, part, counters, xq, xds, terms, sm); \
        else if (hd <= 128) attention_decode_chunk<F16, 128, ATT_DECODE_MAX_T>(a, part, counters, xq, xds, terms, sm); \
        else attention_decode_chunk<F16, 256, ATT_DECODE_MAX_T>(a, part, counters, xq, xds, terms, sm); \
    }                                                                                             \
}

DEFINE_ATTENTION(f16, true)
DEFINE_ATTENTION(f32, false)
