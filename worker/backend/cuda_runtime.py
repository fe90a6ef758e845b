"""The CUDA runtime side of the backend: the device check, kernel modules (NVRTC) and the memory pool.

    cp = require_cuda_device(0)              # CuPy, a driver and GPU 0, or CudaUnavailableError
    pool = device_pool()                     # one MemoryPool over plain cudaMalloc, CuPy's allocator
    fn = kernel_function(0, "norm.cu", "rmsnorm")
    fn((grid,), (block,), (x, w, y, i32(D), f32(eps)))

Kernel arguments are passed with the width of the C parameter: `i32`, `i64`, `f32` and `NULL`
(a pointer-sized zero). CuPy sizes a bare Python number itself, which for a `long long` parameter
would be silent memory corruption.
"""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np

from worker.errors import CudaUnavailableError

KERNEL_DIR = Path(__file__).with_name("kernels")


def require_cuda_device(device_index: int):
    """CuPy, a working driver and GPU `device_index`, or CudaUnavailableError naming what is missing
    (CUDA_UNAVAILABLE; CUDA_DEVICE_NOT_FOUND for an index beyond the GPUs there). Returns cupy."""
    try:
        import cupy as cp
    except ImportError as exc:
        raise CudaUnavailableError(f"CuPy is not installed: {exc}") from exc
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise CudaUnavailableError(f"no usable CUDA driver: {exc}") from exc
    if count < 1:       # docs/errors.md: no GPU at all is CUDA_UNAVAILABLE, not a missing index
        raise CudaUnavailableError("the CUDA driver reports no GPU (0 visible)")
    if not 0 <= device_index < count:
        raise CudaUnavailableError(f"CUDA device {device_index} does not exist ({count} visible)",
                                   code="CUDA_DEVICE_NOT_FOUND")
    return cp


# -- kernel arguments ----------------------------------------------------------------------------

def i32(v) -> np.int32:
    return np.int32(v)


def i64(v) -> np.int64:
    return np.int64(v)


def f32(v) -> np.float32:
    return np.float32(v)


NULL = np.uint64(0)


def elementwise_grid(n: int, block: int = 256) -> int:
    """Blocks for a grid-stride loop over n values (bounded: the loop covers the rest)."""
    return max(1, min((n + block - 1) // block, 65536))


# -- kernel modules --------------------------------------------------------------------------------

def kernel_source(name: str) -> str:
    """A .cu file with its local #include "x.cuh" lines replaced by the header text (once each).

    NVRTC then needs no include path, and CuPy's compile cache sees header edits.
    """
    seen: set[str] = set()

    def expand(text: str) -> str:
        def include(m):
            header = m.group(1)
            if header in seen:
                return ""
            seen.add(header)
            return expand((KERNEL_DIR / header).read_text())
        return re.sub(r'^\s*#include\s+"([^"]+)"\s*$', include, text, flags=re.MULTILINE).replace("#pragma once", "")

    return expand((KERNEL_DIR / name).read_text())


_MODULES: dict[tuple[int, str], object] = {}
_MODULES_LOCK = threading.Lock()


def _module(device_index: int, name: str):
    """The compiled RawModule of one .cu file on one GPU (compiled once per process)."""
    import cupy as cp

    key = (device_index, name)
    with _MODULES_LOCK:
        if key not in _MODULES:
            _MODULES[key] = cp.RawModule(code=kernel_source(name), options=("-std=c++17",))
        return _MODULES[key]


# -- memory ------------------------------------------------------------------------------------

_POOL = None
_ALLOCATOR = None


def device_pool():
    """The process's CuPy memory pool over plain cudaMalloc, installed as CuPy's allocator."""
    global _POOL, _ALLOCATOR
    import cupy as cp

    if _POOL is None:
        _POOL = cp.cuda.MemoryPool()             # default: cudaMalloc (not malloc_managed)
        _ALLOCATOR = _POOL.malloc
        if os.environ.get("M0_CUDA_DIRECT_MALLOC"):
            # one cudaMalloc per buffer, no pooling: exact bounds for compute-sanitizer memcheck
            _ALLOCATOR = _direct_malloc
        cp.cuda.set_allocator(_ALLOCATOR)
    return _POOL


def _direct_malloc(size: int):
    import cupy as cp

    return cp.cuda.memory.MemoryPointer(cp.cuda.memory.Memory(size), 0)


def allocator_is_device_pool() -> bool:
    """True while CuPy still allocates through our plain-device-memory pool."""
    import cupy as cp

    current = cp.cuda.get_allocator()
    return current is _ALLOCATOR or current == _ALLOCATOR


def process_allocations():
    """A context in which this thread allocates from the process pool again: for buffers that must
    outlive a captured decode graph whose private pool is this thread's allocator meanwhile."""
    import cupy as cp

    return cp.cuda.using_allocator(_ALLOCATOR)


# -- cuBLAS ----------------------------------------------------------------------------------------

_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)


def sgemm_nt(y, col0: int, x, w) -> None:
    """y[:, col0:col0 + n] = x @ w.T in float32 through cuBLAS, on the current stream.

    x [T, K], w [n, K] and y [T, N] are C-contiguous float32 device arrays. One cuBLAS call
    with no temporary: the column block of y is a sub-matrix with leading dimension N. (cupy.matmul
    costs tens of microseconds of host time a call; prefill makes a few hundred of them.)
    Row-major y = x w^T is column-major y' = w'^T x', hence op(A) = T on w and op(B) = N on x.
    """
    import cupy as cp
    from cupy_backends.cuda.libs import cublas

    (T, K), n, N = x.shape, w.shape[0], y.shape[1]
    if not (T and n and K):
        return
    handle = cp.cuda.device.get_cublas_handle()
    cublas.setStream(handle, cp.cuda.get_current_stream().ptr)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    cublas.sgemm(handle, cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, n, T, K, _ONE.ctypes.data, w.data.ptr, K,
                 x.data.ptr, K, _ZERO.ctypes.data, y.data.ptr + 4 * col0, N)
