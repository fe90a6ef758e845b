// Asynchronous global -> shared copies (PTX ISA cp.async, sm_80 and later): a thread's copies are grouped by
// cp_async_commit; cp_async_wait<N> waits until at most N of its newest groups are still in flight. Another
// thread sees the copied bytes only after that wait and a __syncthreads.
#pragma once
#include "common.cuh"

// 4 bytes: both addresses 4-byte aligned; .ca keeps the line in L1 (the neighbouring words are copied next).
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n"
                 :: "r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }
