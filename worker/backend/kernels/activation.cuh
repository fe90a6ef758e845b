// Gate activations shared by the elementwise kernels and the fused decode products (vecdot.cu).
// Evaluated in double with the reference's formulas (worker/backend/numpy.py): 1 + tanh(z) cancels
// catastrophically for z << 0 in float32; double costs nothing next to the memory traffic.
#pragma once

__device__ __forceinline__ double sigmoid_d(double x) { return 0.5 * (1.0 + tanh(0.5 * x)); }

// silu(g) * u, rounded once to float (elementwise.cu's swiglu)
__device__ __forceinline__ float swiglu_f(float g, float u) {
    const double gd = g;
    return (float)(gd * sigmoid_d(gd) * (double)u);
}

// GPT-OSS: g = min(g, limit); u = clip(u, -limit, limit); silu-like g sigmoid(alpha g) (u + 1), rounded
// once to float (elementwise.cu's swiglu_clamped; has_limit = 0: no clamping)
__device__ __forceinline__ float swiglu_clamped_f(float g, float u, int has_limit, float limit, float alpha) {
    double gi = g, ui = u;
    if (has_limit) {
        gi = fmin(gi, (double)limit);
        ui = fmin(fmax(ui, -(double)limit), (double)limit);
    }
    return (float)(gi * sigmoid_d((double)alpha * gi) * (ui + 1.0));
}
