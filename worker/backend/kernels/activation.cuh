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
