"""LT-016 (and the other host builds of the kernels): the host launcher itself.

The host tests of the kernels run CUDA kernel sources on the host, a fiber per CUDA thread
(stories/llama/_host_cuda.py). They can only catch a kernel's missing barrier if the launcher runs
threads in an order that exposes it, and they must not hang on a barrier some threads never reach.
These tests check that on small kernels written here, each with a known answer.
"""
import ctypes
import subprocess
import sys

import numpy as np
import pytest

from stories.llama._host_cuda import THREADED_LAUNCH, THREADED_PRELUDE, build_host_library, host_entries

pytestmark = pytest.mark.story("LT-016")

# Each thread writes its slot of shared memory, then reads its neighbour's (in another warp at the block's
# edge): with the barrier the neighbour's value, without it what the slot held before (zero).
KERNELS = r"""
extern "C" __global__ void neighbour(float* out, int with_barrier) {
    __shared__ float slot[256];
    const int t = threadIdx.x, n = blockDim.x;
    slot[t] = 0.0f;
    __syncthreads();
    slot[t] = 1000.0f * blockIdx.x + t;
    if (with_barrier) __syncthreads();
    out[blockIdx.x * n + t] = slot[(t + 32) % n];
}
extern "C" __global__ void warp_total(float* out) {
    float v = (float)threadIdx.x;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
extern "C" __global__ void half_barrier(float* out) {
    if (threadIdx.x < 32) __syncthreads();      // the other warps never arrive
    out[threadIdx.x] = 1.0f;
}
"""


@pytest.fixture(scope="module")
def launch_lib(tmp_path_factory):
    text = THREADED_PRELUDE + KERNELS + THREADED_LAUNCH
    return build_host_library(text + host_entries(KERNELS), tmp_path_factory.mktemp("launch"), "launch_host",
                              timeout=300)


def _run(lib, name, blocks, threads, *args, seed=1):
    out = np.full(blocks * threads, np.nan, np.float32)
    getattr(lib, f"host_{name}")(ctypes.c_uint(blocks), ctypes.c_uint(1), ctypes.c_uint(threads), ctypes.c_uint(seed),
                                 ctypes.c_void_p(out.ctypes.data), *args)
    return out.reshape(blocks, threads)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_barrier_makes_the_neighbours_value_visible(launch_lib, seed):
    out = _run(launch_lib, "neighbour", 3, 128, ctypes.c_int(1), seed=seed)
    t = np.arange(128)
    assert np.array_equal(out, 1000.0 * np.arange(3)[:, None] + (t + 32) % 128)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_missing_barrier_is_seen_on_every_run(launch_lib, seed):
    """One warp runs as far as it can before the next starts: the warp that runs first reads its neighbours'
    slots before they write them, every time (real threads would read them early only sometimes)."""
    out = _run(launch_lib, "neighbour", 3, 128, ctypes.c_int(0), seed=seed)
    expected = 1000.0 * np.arange(3)[:, None] + (np.arange(128) + 32) % 128
    assert (out != expected).any(axis=1).all()      # each block shows the race


def test_warp_shuffles_sum_the_warp(launch_lib):
    out = _run(launch_lib, "warp_total", 2, 64)
    assert np.array_equal(out, np.repeat([[sum(range(32))] * 32 + [sum(range(32, 64))] * 32], 2, axis=0))


def test_a_barrier_some_threads_never_reach_stops_with_a_message(launch_lib):
    """Where threads would wait forever, the launcher aborts the process and says which block."""
    code = ("import ctypes, numpy as np, sys; lib = ctypes.CDLL(sys.argv[1]); out = np.zeros(64, np.float32); "
            "lib.host_half_barrier(1, 1, 64, 1, ctypes.c_void_p(out.ctypes.data))")
    run = subprocess.run([sys.executable, "-c", code, launch_lib._name], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "block (0, 0, 0): 32 threads wait at barriers none can pass" in run.stderr
