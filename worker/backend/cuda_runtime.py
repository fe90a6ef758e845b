"""The CUDA runtime side of the backend: the device check, kernel modules (NVRTC), the memory pool, cuBLAS.

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
import weakref
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


def kernel_modules() -> list[str]:
    """Every kernel module: the .cu files of worker/backend/kernels."""
    return sorted(path.name for path in KERNEL_DIR.glob("*.cu"))


def compile_module(name: str, device_index: int = 0) -> None:
    """Compile one kernel module for this GPU now rather than at its first launch. CuPy keeps the binary in its
    disk cache (keyed by the source, the options and the GPU), so later processes on the machine load it instead
    of compiling: NVRTC takes tens of seconds for moe_gemm.cu's many kernels."""
    _module(device_index, name).compile()


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

# cublas_api.h / library_types.h values (CuPy's cublas module passes them through as ints).
CUDA_R_32F = 0
CUBLAS_COMPUTE_32F = 68               # float32 products (a handle in default math mode uses no TF32)
CUBLAS_COMPUTE_32F_FAST_TF32 = 77     # tensor cores read the inputs as TF32, accumulate in float32
CUBLAS_GEMM_DEFAULT = -1
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
_ONE, _ZERO = np.ones(1, np.float32), np.zeros(1, np.float32)     # alpha and beta (host pointer mode)
_ONE_PTR, _ZERO_PTR = _ONE.ctypes.data, _ZERO.ctypes.data


class CublasNT:
    """Row-major products y[:, col0:col0 + n] (+)= x @ w.T through cublasGemmEx on a handle of our own.

    Its own handle keeps host pointer mode and default math mode set once (CuPy's shared handle may
    be left otherwise by other code), so a product costs one `on_current_stream` and one call a gemm.
    Operands are device addresses (ints) with row strides in floats: the prefill products slice
    one persistent workspace, and a CuPy view costs microseconds of host time to make.
    Row-major y = x w^T is column-major y' = w'^T x', hence op(A) = T on w and op(B) = N on x.

    The stream and the products go to libcublas directly (ctypes): CuPy's wrappers refuse every
    cuBLAS call while a stream is captured, and cuBLAS itself supports capture once it has a
    workspace of its own (`set_workspace`), so that it allocates nothing inside a graph.
    """

    def __init__(self, cp):
        from cupy_backends.cuda.libs import cublas

        self._cp = cp
        self._lib = _cublas_library()
        self.handle = cublas.create()
        cublas.setPointerMode(self.handle, cublas.CUBLAS_POINTER_MODE_HOST)
        self._stream = None
        self._workspace: tuple[int, int] | None = None
        weakref.finalize(self, cublas.destroy, self.handle).atexit = False   # process exit frees it

    def _check(self, status: int, what: str) -> None:
        if status:
            raise RuntimeError(f"cuBLAS {what} failed with status {status}")

    def set_workspace(self, ptr: int, nbytes: int) -> None:
        self._check(self._lib.cublasSetWorkspace_v2(self.handle, ptr, nbytes), "cublasSetWorkspace")
        self._workspace = (ptr, nbytes)

    def on_current_stream(self) -> None:
        """Issue the next products on CuPy's current stream (a graph capture's, or the default one)."""
        ptr = self._cp.cuda.get_current_stream().ptr
        if ptr != self._stream:
            self._check(self._lib.cublasSetStream_v2(self.handle, ptr), "cublasSetStream")
            self._stream = ptr
            # cublasSetStream puts the handle back on cuBLAS's default workspace pool (cuBLAS docs):
            # ours again, or a graph capture's products would allocate 32 MiB outside the accounting
            if self._workspace is not None:
                self.set_workspace(*self._workspace)

    def gemm(self, y: int, ldy: int, x: int, ldx: int, w: int, ldw: int, T: int, n: int, K: int, *,
             accumulate: bool = False, tf32: bool = False) -> None:
        """y[T, n] (ld ldy) = x[T, K] (ld ldx) @ w[n, K]^T (ld ldw), plus y's old value when accumulate.
        tf32: on TF32 tensor cores (inputs must already be TF32 values for a float32-exact product)."""
        self._check(self._lib.cublasGemmEx(
            self.handle, CUBLAS_OP_T, CUBLAS_OP_N, n, T, K, _ONE_PTR, w, CUDA_R_32F, ldw, x, CUDA_R_32F, ldx,
            _ONE_PTR if accumulate else _ZERO_PTR, y, CUDA_R_32F, ldy,
            CUBLAS_COMPUTE_32F_FAST_TF32 if tf32 else CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT), "cublasGemmEx")


def _cublas_library():
    """libcublas as CuPy loaded it (the same library and handle space), typed for ctypes calls."""
    import ctypes
    import ctypes.util

    from cupy_backends.cuda.libs import cublas  # noqa: F401 — loads libcublas into the process

    path = None
    with open("/proc/self/maps") as maps:
        for line in maps:
            name = line.split()[-1] if line.split() else ""
            if "/libcublas.so" in name:
                path = name
                break
    lib = ctypes.CDLL(path or ctypes.util.find_library("cublas"))
    p, i, s = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    lib.cublasSetStream_v2.argtypes = [p, p]
    lib.cublasSetWorkspace_v2.argtypes = [p, p, s]
    lib.cublasGemmEx.argtypes = [p, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i]
    for fn in (lib.cublasSetStream_v2, lib.cublasSetWorkspace_v2, lib.cublasGemmEx):
        fn.restype = i
    return lib
