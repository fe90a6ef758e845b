// Causal attention over the KV cache (GQA and MHA; sliding window; sinks; optional fused RoPE).
//
// attention_prefill_<kvt> (any T): tiled flash attention. A block takes BQ queries of one head,
//   walks the visible keys in tiles of BK (K and V staged in shared memory as float32) and keeps
//   an online softmax per query; all arithmetic is float32. The grid is 1-D: query tiles x heads.
// attention_decode_<kvt> (T <= 4): flash decoding. A block takes one chunk of the visible keys for
//   up to RB (query head, token) rows of one KV head's group, so K/V rows are read once a group;
//   lanes run over dimensions (8 lanes x 8 dimensions a 64-wide key). A single active chunk writes
//   the output directly; otherwise each block leaves its partial softmax (max, sum, weighted values)
//   in a workspace and the last block of its rows (an atomic ticket after __threadfence) merges
//   them, so a decode step needs one launch.
//
// Common arguments. q: [T, H, hd] float32; k_new, v_new: [T, KVH, hd] float32, the step's own
// keys and values; k_cache, v_cache: [n_ctx, KVH, hd] (float16 or float32); out: [T, H * hd].
// The step's tokens sit at positions start + t (start = *start_pos_dev when that is not null, else
// start_pos); query t sees keys [lo, start + t], lo = start + t - window + 1 when window > 0.
// sinks: [H] float32 or null. scale_log2: the score scale times log2(e) (scores live in base 2).
// kv_table: null, or the device addresses of every layer's cache, [2 * layers] (K, V of layer l at
// 2l, 2l + 1): then k_cache, v_cache are kv_table[2 * layer], kv_table[2 * layer + 1], read at launch,
// so that a captured graph serves any cache of its shape (cuda_graph.py writes the table before a replay).
// rope_cos, rope_sin: [positions, rope_dim / 2] tables or null (no RoPE); with them, q and the
// step's keys are rotated here (rope_neox: pairs (i, i + dim/2), else (2i, 2i+1)); dimensions
// >= rope_dim pass through. Keys at positions >= start are read from k_new/v_new (rotated on the
// fly), so no block reads a cache row that another block of the same launch writes; one block of
// each KV head (prefill: of each query tile) stores the step's rows (rotated keys) into the cache.
#include "common.cuh"
#include "vecdot.cuh"

#define ATT_MAX_HEAD_DIM 256
#define ATT_DECODE_MAX_T 4
#define ATT_DECODE_WARPS 8
#define ATT_MAX_SPLITS 64
#define ATT_DECODE_MIN_CHUNK 256      // keys a decode chunk, at least
#define ATT_DECODE_ROWS 8             // (query head, token) rows a decode block, at most: hd <= 128
#define ATT_DECODE_ROWS_FEW 4         // and for hd > 128 (the launcher's grid picks 1, 2, 4 or 8)
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

// -- decode: one block per (split, KV head, row group), merged by the last block ----------------------
//
// A block serves RB rows (query head, token) of one KV head's group: RB = 1, 2, 4 or 8 (at most 4 for
// heads 256 wide), as the launcher's grid says (kernels/attention.py decode_rows: few rows a block at
// short contexts, where the step is a few blocks and each block's chain of dependent steps is its time;
// whole groups where the cache is long and K/V reads count). Every row of a block is computed, absent
// ones masked, so that the rows' dependency chains interleave; each K/V row is read once a block.
// Lanes run over dimensions: LPK lanes a key, 8 dimensions a lane (one 16-byte load of a float16
// row), KPW = 32 / LPK keys a warp at once; a score is reduced over its LPK lanes by log2(LPK) shuffles. Each lane group keeps an online softmax per row over its keys (U keys a
// step, one rescale a step); the groups of a warp merge by shuffles, the warps through shared memory.
// The block's first batch of K/V loads is issued before the queries are staged, and each step loads
// the next batch before computing on the current one.
// With one active chunk (short contexts) the block writes the output itself. Otherwise each block
// leaves its partial softmax (max, sum, weighted values) in `part`: per (head, split, token)
// [max, sum, values (hd)]; the last block of a (KV head, row group) (an atomic ticket after
// __threadfence, counters[blockIdx.y], zero between launches) merges them.

template <int HD> struct DecodeShape {
    static constexpr int LPK = HD / 8 < 32 ? HD / 8 : 32;        // lanes a key
    static constexpr int KPW = 32 / LPK;                         // keys a warp at once
    static constexpr int RB = HD <= 128 ? ATT_DECODE_ROWS : ATT_DECODE_ROWS_FEW;   // rows a block, at most
};

template <int N> struct IntTag { static constexpr int value = N; };

// 8 consecutive cache values of a row, as loaded (one 16-byte load for float16, two for float32).
template <bool F16> struct Row8 { uint4 w; };
template <> struct Row8<false> { float4 a, b; };

template <bool F16> __device__ __forceinline__ Row8<F16> row8_load(const void* p, i64 i) {
    Row8<F16> r;
    if constexpr (F16) {
        r.w = *(const uint4*)((const u16*)p + i);
    } else {
        r.a = *(const float4*)((const float*)p + i);
        r.b = *(const float4*)((const float*)p + i + 4);
    }
    return r;
}

template <bool F16> __device__ __forceinline__ Row8<F16> row8_zero() {
    Row8<F16> r;
    if constexpr (F16) r.w = uint4{0u, 0u, 0u, 0u};
    else r.a = r.b = float4{0.0f, 0.0f, 0.0f, 0.0f};
    return r;
}

template <bool F16> __device__ __forceinline__ void row8_unpack(const Row8<F16>& r, float* o) {
    if constexpr (F16) {
        halves2(r.w.x, o); halves2(r.w.y, o + 2); halves2(r.w.z, o + 4); halves2(r.w.w, o + 6);
    } else {
        o[0] = r.a.x; o[1] = r.a.y; o[2] = r.a.z; o[3] = r.a.w;
        o[4] = r.b.x; o[5] = r.b.y; o[6] = r.b.z; o[7] = r.b.w;
    }
}

template <int HD, int MT> struct DecodeSmem {
    static constexpr int RB = DecodeShape<HD>::RB, NW = ATT_DECODE_WARPS;
    static constexpr int PARTS = ATT_MAX_SPLITS > NW ? ATT_MAX_SPLITS : NW;
    static constexpr int FLOATS = (RB + 2 * MT) * HD + 2 * NW * RB + NW * RB * HD + (2 * PARTS + 1) * RB;
};

// Stage the block's queries (rotated, scaled) in qs [RB][HD] and the step's keys (rotated) and values
// in kn, vn [MT][HD]: every load of a thread issued before any is used (one memory latency).
template <int HD, int MT, int RB>
__device__ __forceinline__ void stage_decode_inputs(const AttentionArgs& a, int kvh, int r0, int nr, int G,
                                                    float* qs, float* kn, float* vn) {
    constexpr int NT = 32 * ATT_DECODE_WARPS;
    constexpr int QE = RB * HD, NE = QE + 2 * MT * HD, ITEMS = (NE + NT - 1) / NT;
    const int half = a.rope_dim >> 1;
    float x[ITEMS], y[ITEMS], c[ITEMS], s[ITEMS];
    _Pragma("unroll") for (int i = 0; i < ITEMS; ++i) {
        const int e = threadIdx.x + i * NT;
        x[i] = y[i] = s[i] = 0.0f;
        c[i] = 1.0f;
        if (e >= NE) continue;
        const int kind = e < QE ? 0 : e < QE + MT * HD ? 1 : 2;          // query, key, value
        const int f = kind == 0 ? e : kind == 1 ? e - QE : e - QE - MT * HD;
        const int row = f / HD, d = f % HD;
        int t;
        const float* src;
        if (kind == 0) {
            if (row >= nr) continue;
            const int r = r0 + row, g = r % G;
            t = r / G;
            src = a.q + ((i64)t * a.H + (i64)kvh * G + g) * a.hd;
        } else {
            t = row;
            if (t >= a.T) continue;
            src = (kind == 1 ? a.k_new : a.v_new) + ((i64)t * a.KVH + kvh) * a.hd;
        }
        if (d >= a.hd) continue;
        x[i] = src[d];
        if (kind < 2 && a.rope_cos && d < a.rope_dim) {
            const bool first = a.rope_neox ? d < half : (d & 1) == 0;
            const int pair = a.rope_neox ? (first ? d : d - half) : d >> 1;
            const int partner = a.rope_neox ? (first ? d + half : d - half) : d ^ 1;
            const i64 pos = a.start + t;
            y[i] = src[partner];
            c[i] = a.rope_cos[pos * half + pair];
            s[i] = a.rope_sin[pos * half + pair];
        }
    }
    _Pragma("unroll") for (int i = 0; i < ITEMS; ++i) {
        const int e = threadIdx.x + i * NT;
        if (e >= NE) continue;
        const int kind = e < QE ? 0 : e < QE + MT * HD ? 1 : 2;
        const int f = kind == 0 ? e : kind == 1 ? e - QE : e - QE - MT * HD;
        const int d = f % HD;
        float v = x[i];
        if (kind < 2 && a.rope_cos && d < a.rope_dim) {   // the same expressions as rope.cu (a, b = x, y)
            const bool first = a.rope_neox ? d < half : (d & 1) == 0;
            v = first ? x[i] * c[i] - y[i] * s[i] : y[i] * s[i] + x[i] * c[i];
        }
        if (kind == 0) qs[f] = v * a.scale_log2;
        else (kind == 1 ? kn : vn)[f] = v;
    }
}

// The keys of a decode step, [lo, lo + n_keys), in chunks of `chunk` keys over n_splits blocks: at least
// ATT_DECODE_MIN_CHUNK keys a chunk, so that short contexts take one chunk, which needs no merge.
struct DecodeChunks { int lo, n_keys, chunk, n_active; };

__device__ __forceinline__ DecodeChunks decode_chunks(const AttentionArgs& a, int n_splits) {
    const int lo = a.window > 0 ? max(0, a.start - a.window + 1) : 0;   // the lowest key query 0 sees
    const int n_keys = a.start + a.T - lo;
    const int chunk = max(ATT_DECODE_MIN_CHUNK, ((n_keys + n_splits - 1) / n_splits + 31) & ~31);
    return DecodeChunks{lo, n_keys, chunk, (n_keys + chunk - 1) / chunk};
}

// MT: the most tokens this instance takes (1, or up to 4); RB: rows a block. The grid's row groups hold
// RB * sub rows: with sub > 1 (one active chunk, so the grid's split blocks would idle) block (x, y) takes
// rows [RB x, RB x + RB) of row group y as the only chunk, blocks x >= sub nothing.
template <bool F16, int HD, int MT, int RB>
__device__ void attention_decode_rows(const AttentionArgs& a, float* part, int* counters, i8* xq, float4* xds,
                                      int terms, float* smem, int sub) {
    using Shape = DecodeShape<HD>;
    constexpr int LPK = Shape::LPK, KPW = Shape::KPW, NW = ATT_DECODE_WARPS;
    static_assert(RB <= Shape::RB, "rows a block");
    constexpr int NG = NW * KPW;                        // lane groups of the block
    constexpr int U = F16 ? 4 : 2;                      // keys a lane group takes a step
    float* qs = smem;                                   // [RB][HD] queries, rotated and scaled
    float* kn = qs + RB * HD;                           // [MT][HD] the step's keys, rotated
    float* vn = kn + MT * HD;                           // [MT][HD] the step's values
    float* wm = vn + MT * HD;                           // [NW][RB]
    float* wl = wm + NW * RB;                           // [NW][RB]
    float* wo = wl + NW * RB;                           // [NW][RB][HD]
    float* pf = wo + NW * RB * HD;                      // [PARTS][RB]: m_s, then f_s
    float* pl = pf + DecodeSmem<HD, MT>::PARTS * RB;    // [PARTS][RB]: l_s
    float* pden = pl + DecodeSmem<HD, MT>::PARTS * RB;  // [RB]
    __shared__ int last_block;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int d0 = (lane % LPK) * 8, gi = warp * KPW + lane / LPK;    // the lane's dimensions, its group
    if ((int)blockIdx.x >= sub && sub > 1) return;
    const int split = sub > 1 ? 0 : blockIdx.x, n_splits = gridDim.x;
    const int T = a.T, hd = a.hd, start = a.start, G = a.H / a.KVH, R = T * G;
    const int n_rg = gridDim.y / a.KVH;                 // row groups a KV head (the launcher's choice)
    const int kvh = blockIdx.y / n_rg;
    const int r0 = (blockIdx.y % n_rg) * RB * sub + (sub > 1 ? blockIdx.x * RB : 0), nr = min(RB, R - r0);
    if (nr <= 0) return;                                // rows past R (row groups rounded up)
    const DecodeChunks dc = decode_chunks(a, n_splits);
    const int lo = dc.lo, end = start + T, chunk = dc.chunk, n_active = dc.n_active;
    if (split >= n_active) return;
    const int c0 = lo + split * chunk, c1 = min(end, c0 + chunk);
    const bool lane_dims = d0 < hd;
    const float NEG_INF = -__int_as_float(0x7f800000);

    // Cache rows j < start of this step's keys (the step's own rows come from shared memory).
    auto load_batch = [&](int base, Row8<F16>* kr, Row8<F16>* vr) {
        _Pragma("unroll") for (int u = 0; u < U; ++u) {
            const int j = base + gi + NG * u;
            const bool in = lane_dims && j < c1 && j < start;
            const i64 row = ((i64)j * a.KVH + kvh) * hd + d0;
            kr[u] = in ? row8_load<F16>(a.k_cache, row) : row8_zero<F16>();
            vr[u] = in ? row8_load<F16>(a.v_cache, row) : row8_zero<F16>();
        }
    };
    Row8<F16> kr[U], vr[U];
    load_batch(c0, kr, vr);                             // in flight while the queries are staged
    // Thread r's row's sink logit, read now rather than on the way out.
    const int r_own = (int)threadIdx.x < nr ? (int)threadIdx.x : 0;
    const float sink_own = a.sinks ? a.sinks[kvh * G + (r0 + r_own) % G] * ATT_LOG2E : NEG_INF;
    stage_decode_inputs<HD, MT, RB>(a, kvh, r0, nr, G, qs, kn, vn);
    __syncthreads();
    if (split == 0 && r0 == 0) {                        // the step's rows into the cache, once a KV head
        for (int e = threadIdx.x; e < T * hd; e += blockDim.x) {
            const int t = e / hd, d = e % hd;
            const i64 dst = ((i64)(start + t) * a.KVH + kvh) * hd + d;
            kv_store<F16>(a.k_cache, dst, kn[t * HD + d]);
            kv_store<F16>(a.v_cache, dst, vn[t * HD + d]);
        }
    }

    float m[RB], l[RB], acc[RB][8];
    _Pragma("unroll") for (int r = 0; r < RB; ++r) {
        m[r] = NEG_INF; l[r] = 0.0f;
        _Pragma("unroll") for (int e = 0; e < 8; ++e) acc[r][e] = 0.0f;
    }
    // One step: UU keys a lane group (keys base + gi + NG u), rows r >= nr masked rather than skipped, so
    // that the rows' dependency chains (shuffles, exponentials) interleave.
    auto step = [&](auto keys, int base, const Row8<F16>* kc, const Row8<F16>* vc) {
        constexpr int UU = decltype(keys)::value;
        float k[UU][8];
        _Pragma("unroll") for (int u = 0; u < UU; ++u) {
            const int j = base + gi + NG * u;
            if (j >= start && j < c1) {
                _Pragma("unroll") for (int e = 0; e < 8; ++e) k[u][e] = kn[(j - start) * HD + d0 + e];
            } else {
                row8_unpack<F16>(kc[u], k[u]);
            }
        }
        float s[RB][UU];
        _Pragma("unroll") for (int r = 0; r < RB; ++r) {
            const float4 qa = *(const float4*)(qs + r * HD + d0), qb = *(const float4*)(qs + r * HD + d0 + 4);
            const float qv[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
            _Pragma("unroll") for (int u = 0; u < UU; ++u) {
                float x = 0.0f;
                _Pragma("unroll") for (int e = 0; e < 8; ++e) x = fmaf(qv[e], k[u][e], x);
                s[r][u] = x;
            }
        }
        _Pragma("unroll") for (int off = LPK / 2; off > 0; off >>= 1)
            _Pragma("unroll") for (int r = 0; r < RB; ++r)
                _Pragma("unroll") for (int u = 0; u < UU; ++u) s[r][u] += __shfl_xor_sync(0xffffffffu, s[r][u], off);
        float v[UU][8];
        _Pragma("unroll") for (int u = 0; u < UU; ++u) {
            const int j = base + gi + NG * u;
            if (j >= start && j < c1) {
                _Pragma("unroll") for (int e = 0; e < 8; ++e) v[u][e] = vn[(j - start) * HD + d0 + e];
            } else {
                row8_unpack<F16>(vc[u], v[u]);
            }
        }
        _Pragma("unroll") for (int r = 0; r < RB; ++r) {
            const int qpos = start + (r0 + r) / G;
            float mx = NEG_INF;
            _Pragma("unroll") for (int u = 0; u < UU; ++u) {
                const int j = base + gi + NG * u;
                if (!(r < nr && j < c1 && key_visible(j, qpos, a.window))) s[r][u] = NEG_INF;
                mx = fmaxf(mx, s[r][u]);
            }
            const float m_new = fmaxf(m[r], mx);
            const float m_ref = m_new == NEG_INF ? 0.0f : m_new;     // nothing visible yet: every weight 0
            const float corr = exp2f(m[r] - m_ref);
            float p[UU], sum = 0.0f;
            _Pragma("unroll") for (int u = 0; u < UU; ++u) { p[u] = exp2f(s[r][u] - m_ref); sum += p[u]; }
            l[r] = fmaf(l[r], corr, sum);
            m[r] = m_new;
            _Pragma("unroll") for (int e = 0; e < 8; ++e) {
                float o = acc[r][e] * corr;
                _Pragma("unroll") for (int u = 0; u < UU; ++u) o = fmaf(p[u], v[u][e], o);
                acc[r][e] = o;
            }
        }
    };
    // Full steps of U keys a group; the last step takes as few as cover the keys left (a short
    // context is one step of one key a group).
    for (int base = c0; base < c1;) {
        const int left = c1 - base, uu = left > 2 * NG ? U : left > NG ? 2 : 1;
        const int next = base + NG * uu;
        Row8<F16> kc[U], vc[U];
        _Pragma("unroll") for (int u = 0; u < U; ++u) { kc[u] = kr[u]; vc[u] = vr[u]; }
        if (next < c1) load_batch(next, kr, vr);      // the next step's rows, in flight during this one
        if (uu == U) step(IntTag<U>{}, base, kc, vc);
        else if (uu == 2) step(IntTag<2>{}, base, kc, vc);
        else step(IntTag<1>{}, base, kc, vc);
        base = next;
    }
    // Merge the lane groups of each warp (butterflies over the groups), then stage the warps' states.
    _Pragma("unroll") for (int r = 0; r < RB; ++r) {
        _Pragma("unroll") for (int off = LPK; off < 32; off <<= 1) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[r], off), lo_ = __shfl_xor_sync(0xffffffffu, l[r], off);
            const float M = fmaxf(m[r], mo);
            const float f = m[r] == NEG_INF ? 0.0f : exp2f(m[r] - M), fo = mo == NEG_INF ? 0.0f : exp2f(mo - M);
            l[r] = l[r] * f + lo_ * fo;
            _Pragma("unroll") for (int e = 0; e < 8; ++e) {
                const float ao = __shfl_xor_sync(0xffffffffu, acc[r][e], off);
                acc[r][e] = acc[r][e] * f + ao * fo;
            }
            m[r] = M;
        }
        if (lane < LPK) {
            if (lane == 0) { wm[warp * RB + r] = m[r]; wl[warp * RB + r] = l[r]; }
            *(float4*)(wo + (warp * RB + r) * HD + d0) = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
            *(float4*)(wo + (warp * RB + r) * HD + d0 + 4) = make_float4(acc[r][4], acc[r][5], acc[r][6], acc[r][7]);
        }
    }
    __syncthreads();
    auto head_of = [&](int r) { return kvh * G + (r0 + r) % G; };
    auto token_of = [&](int r) { return (r0 + r) / G; };
    const int stride = hd + 2;                          // one partial: max, sum, values
    if (n_active > 1) {
        for (int e = threadIdx.x; e < nr * stride; e += blockDim.x) {
            const int r = e / stride, c = e % stride;
            float M = NEG_INF;
            for (int w = 0; w < NW; ++w) M = fmaxf(M, wm[w * RB + r]);
            float x = 0.0f;
            if (c == 0) {
                x = M;
            } else {
                for (int w = 0; w < NW; ++w) {
                    const float mw = wm[w * RB + r];
                    const float f = mw == NEG_INF ? 0.0f : exp2f(mw - M);
                    x = fmaf(c == 1 ? wl[w * RB + r] : wo[(w * RB + r) * HD + c - 2], f, x);
                }
            }
            part[(((i64)head_of(r) * n_splits + split) * T + token_of(r)) * stride + c] = x;
        }
        __threadfence();                                // the partial is visible before the ticket
        __syncthreads();
        if (threadIdx.x == 0) last_block = atomicAdd(counters + blockIdx.y, 1) == n_active - 1;
        __syncthreads();
        if (!last_block) return;
        __threadfence();
        if (threadIdx.x == 0) counters[blockIdx.y] = 0;  // ready for the next launch
    }
    // Final: out = sum_s f_s O_s / (sum_s f_s l_s + exp(sink - M)), f_s = exp(m_s - M), over the parts:
    // the splits' partials, or this block's warps. The weights f_s are computed once a row.
    const bool split_parts = n_active > 1;
    const int n_parts = split_parts ? n_active : NW;
    auto part_at = [&](int sp, int r) {
        return part + (((i64)head_of(r) * n_splits + sp) * T + token_of(r)) * stride;
    };
    for (int e = threadIdx.x; e < n_parts * nr; e += blockDim.x) {
        const int sp = e / nr, r = e % nr;
        pf[sp * RB + r] = split_parts ? __ldcg(part_at(sp, r)) : wm[sp * RB + r];
        pl[sp * RB + r] = split_parts ? __ldcg(part_at(sp, r) + 1) : wl[sp * RB + r];
    }
    __syncthreads();
    if (threadIdx.x < nr) {
        const int r = threadIdx.x;
        const float sink = sink_own;
        float M = sink;
        for (int sp = 0; sp < n_parts; ++sp) M = fmaxf(M, pf[sp * RB + r]);
        float den = a.sinks ? exp2f(sink - M) : 0.0f;
        for (int sp = 0; sp < n_parts; ++sp) {
            const float ms = pf[sp * RB + r];
            const float f = ms == NEG_INF ? 0.0f : exp2f(ms - M);
            pf[sp * RB + r] = f;
            den = fmaf(pl[sp * RB + r], f, den);
        }
        pden[r] = den;
    }
    __syncthreads();
    auto combine = [&](int r, int d) -> float {
        float num = 0.0f;
        if (split_parts) {
            const float* p0 = part_at(0, r) + 2 + d;
            const i64 sp_stride = (i64)T * stride;
            _Pragma("unroll 8") for (int sp = 0; sp < n_parts; ++sp)
                num = fmaf(__ldcg(p0 + sp * sp_stride), pf[sp * RB + r], num);
        } else {
            _Pragma("unroll") for (int w = 0; w < NW; ++w) num = fmaf(wo[(w * RB + r) * HD + d], pf[w * RB + r], num);
        }
        return num / pden[r];
    };
    if (xq) {                                           // whole warps over blocks of 32 (hd % 32 == 0)
        const int blocks = hd >> 5;
        for (int b = warp; b < nr * blocks; b += NW) {
            const int r = b / blocks, dd = (b % blocks) * 32, d = dd + lane;
            const i64 o0 = ((i64)token_of(r) * a.H + head_of(r)) * hd;
            const float y = combine(r, d);
            a.out[o0 + d] = y;
            quantize_block_warp(y, xq + o0 + d, (i64)T * a.H * hd, xds + ((o0 + dd) >> 5), terms);
        }
    } else {
        for (int e = threadIdx.x; e < nr * hd; e += blockDim.x) {
            const int r = e / hd, d = e % hd;
            a.out[((i64)token_of(r) * a.H + head_of(r)) * hd + d] = combine(r, d);
        }
    }
}

template <int A, int B> struct MaxOf { static constexpr int value = A > B ? A : B; };
#define DECODE_SMEM_FLOATS MaxOf<DecodeSmem<64, ATT_DECODE_MAX_T>::FLOATS,                             \
    MaxOf<DecodeSmem<128, ATT_DECODE_MAX_T>::FLOATS, DecodeSmem<256, ATT_DECODE_MAX_T>::FLOATS>::value>::value

// -- entry points ------------------------------------------------------------------------------------
// Per cache type: a prefill kernel a head-dimension class (64, 128 or 256: the smallest that holds
// hd; kernels/attention.py picks), and one decode kernel that picks the class (and one token or up
// to four) inside, all of them sharing one static shared buffer.

#define ATTENTION_PARAMS                                                                          \
    const float* __restrict__ q, const float* __restrict__ k_new, const float* __restrict__ v_new,   \
    void* __restrict__ k_cache, void* __restrict__ v_cache, const float* __restrict__ sinks,         \
    float* __restrict__ out, const float* __restrict__ rope_cos, const float* __restrict__ rope_sin, \
    int rope_dim, int rope_neox, int T, int H, int KVH, int hd, int start_pos,                       \
    const int* __restrict__ start_pos_dev, int window, float scale_log2,                             \
    const unsigned long long* __restrict__ kv_table, int layer

#define ATTENTION_ARGS_INIT                                                                       \
    AttentionArgs a{q, k_new, v_new,                                                                 \
                    kv_table ? (void*)kv_table[2 * layer] : k_cache,                                 \
                    kv_table ? (void*)kv_table[2 * layer + 1] : v_cache,                             \
                    sinks, out, rope_cos, rope_sin, rope_dim,                                        \
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

// Rows a block: the launcher's grid has n_rg = gridDim.y / KVH row groups a KV head of RBG rows, RBG the
// smallest of 1, 2, 4, 8 holding ceil(R / n_rg) (so n_rg * RBG >= R). With one active chunk the grid's
// split blocks share a row group's rows instead (sub of them, RBG / sub rows each): a short context in a
// long cache gets as many blocks as a short cache would. Several tokens (MT 4) take blocks of 4 or 8 rows
// only (fewer instances to compile).
template <bool F16, int HD, int MT, int RB>
__device__ __forceinline__ void attention_decode_rb(const AttentionArgs& a, float* part, int* counters, i8* xq,
                                                    float4* xds, int terms, float* sm, int sub) {
    if constexpr (RB <= DecodeShape<HD>::RB && (MT == 1 || RB >= ATT_DECODE_ROWS_FEW))
        attention_decode_rows<F16, HD, MT, RB>(a, part, counters, xq, xds, terms, sm, sub);
}

template <bool F16, int HD, int MT>
__device__ __forceinline__ void attention_decode_by_rows(const AttentionArgs& a, float* part, int* counters, i8* xq,
                                                         float4* xds, int terms, float* sm) {
    constexpr int LEAST = MT == 1 ? 1 : ATT_DECODE_ROWS_FEW;
    const int R = a.T * (a.H / a.KVH), n_rg = max(1, (int)gridDim.y / a.KVH), need = (R + n_rg - 1) / n_rg;
    int rbg = LEAST;
    while (rbg < need && rbg < DecodeShape<HD>::RB) rbg *= 2;
    int sub = 1;
    if (decode_chunks(a, gridDim.x).n_active == 1)
        while (2 * sub <= (int)gridDim.x && rbg / (2 * sub) >= LEAST) sub *= 2;
    switch (rbg / sub) {
        case 1: attention_decode_rb<F16, HD, MT, 1>(a, part, counters, xq, xds, terms, sm, sub); break;
        case 2: attention_decode_rb<F16, HD, MT, 2>(a, part, counters, xq, xds, terms, sm, sub); break;
        case 4: attention_decode_rb<F16, HD, MT, 4>(a, part, counters, xq, xds, terms, sm, sub); break;
        default: attention_decode_rb<F16, HD, MT, 8>(a, part, counters, xq, xds, terms, sm, sub); break;
    }
}

#define DECODE_BY_ROWS(F16, MT)                                                                      \
    if (hd <= 64) attention_decode_by_rows<F16, 64, MT>(a, part, counters, xq, xds, terms, sm);       \
    else if (hd <= 128) attention_decode_by_rows<F16, 128, MT>(a, part, counters, xq, xds, terms, sm); \
    else attention_decode_by_rows<F16, 256, MT>(a, part, counters, xq, xds, terms, sm)

#define DEFINE_ATTENTION(kvt, F16)                                                                \
DEFINE_PREFILL(attention_prefill_##kvt, F16, 64, 64, 32, 128)                                     \
DEFINE_PREFILL(attention_prefill_q32_##kvt, F16, 64, 32, 32, 128)                                 \
DEFINE_PREFILL(attention_prefill_d128_##kvt, F16, 128, 32, 32, 128)                               \
DEFINE_PREFILL(attention_prefill_d256_##kvt, F16, 256, 16, 16, 64)                                \
extern "C" __global__ void __launch_bounds__(32 * ATT_DECODE_WARPS)                                \
attention_decode_##kvt(ATTENTION_PARAMS, float* __restrict__ part, int* __restrict__ counters,    \
                       i8* __restrict__ xq, float4* __restrict__ xds, int terms) {                \
    __shared__ float4 smem4[(DECODE_SMEM_FLOATS + 3) / 4];                                        \
    ATTENTION_ARGS_INIT;                                                                          \
    float* sm = (float*)smem4;                                                                    \
    if (T == 1) {                                 /* a decode step: no staging for absent tokens */ \
        DECODE_BY_ROWS(F16, 1);                                                                      \
    } else {                                                                                      \
        DECODE_BY_ROWS(F16, ATT_DECODE_MAX_T);                                                       \
    }                                                                                             \
}

DEFINE_ATTENTION(f16, true)
DEFINE_ATTENTION(f32, false)
