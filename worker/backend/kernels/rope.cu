// Rotary position embedding with host-computed cos/sin tables (worker/rope.py: YaRN and linear
// scaling, and the YaRN magnitude, are already in the tables).
#include "common.cuh"

// x, y: [T, H, head_dim]; cos_t, sin_t: [n_positions, dim/2]; position of token t:
// positions ? positions[t] : pos_base + t. neox: pairs (i, i + dim/2), else (2i, 2i+1).
// Dimensions >= dim pass through. One thread per (t, h, pair-or-passthrough slot).
extern "C" __global__ void rope(const float* __restrict__ x, float* __restrict__ y,
                                const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                const int* __restrict__ positions, int pos_base,
                                int T, int H, int head_dim, int dim, int neox) {
    const int half = dim >> 1;
    const int slots = half + (head_dim - dim);
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)T * H * slots) return;
    const int s = (int)(idx % slots);
    const i64 th = idx / slots;                 // t * H + h
    const int t = (int)(th / H);
    const float* xv = x + th * head_dim;
    float* yv = y + th * head_dim;
    if (s >= half) {                            // pass-through dimension
        const int d = dim + (s - half);
        yv[d] = xv[d];
        return;
    }
    const i64 pos = positions ? (i64)positions[t] : (i64)pos_base + t;
    const float c = cos_t[pos * half + s], sn = sin_t[pos * half + s];
    const int i0 = neox ? s : 2 * s, i1 = neox ? s + half : 2 * s + 1;
    const float a = xv[i0], b = xv[i1];
    yv[i0] = a * c - b * sn;
    yv[i1] = a * sn + b * c;
}
