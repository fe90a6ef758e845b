"""FT-009 error code to result: CUDA and CuPy failures become WorkerErrors with stable codes.

The plan's story converts the C++ layer's integer error codes into Rust `Result`s. Our worker is
Python + CuPy: the CUDA side fails with CuPy exceptions (CUDARuntimeError carrying the driver's
cudaError name, cupy.cuda.memory.OutOfMemoryError) or with an ImportError when CuPy is missing,
and the honest equivalent is the mapping of those exceptions onto worker.errors codes that the
HTTP API and CLI report (docs/errors.md):

    CuPy not importable                      -> CUDA_UNAVAILABLE
    driver error while counting devices      -> CUDA_UNAVAILABLE (the cudaError text kept)
    driver reports no GPU                    -> CUDA_UNAVAILABLE
    device index not among the visible GPUs  -> CUDA_DEVICE_NOT_FOUND
    allocation refused by the pre-check      -> VRAM_OOM (DeviceOOMError, nothing allocated)
    cudaMalloc fails anyway (OutOfMemoryError) -> VRAM_OOM, the partial allocation given back
    then, for a request: the engine's End event carries the code (VRAM_OOM stays VRAM_OOM; any
    other exception, e.g. a kernel fault, is INFERENCE_FAILED with the CUDA error text).

On the CPU the exceptions come from the real CuPy classes where CuPy is importable and otherwise
from minimal stand-ins with CuPy's names and constructor shapes (a fake `cupy` module is put in
sys.modules for the duration of a test); on the GPU the same mappings run against the driver.
(FT-008 covers the no-GPU path of get_backend and the cap-based OOM fields.)
"""
from __future__ import annotations

import functools
import gc
import sys
import threading
import types
import weakref

import numpy as np
import pytest

from worker.backend.cuda import CudaBackend, CudaUnavailableError
from worker.backend.cuda_graph import DecodeGraphs
from worker.errors import DeviceOOMError, WorkerError

pytestmark = pytest.mark.exclusive_device  # measures or fills the whole device: alone under pytest-xdist

CUDA_ERROR_NO_DEVICE = 100          # cudaErrorNoDevice
CUDA_ERROR_ILLEGAL_ADDRESS = 700    # cudaErrorIllegalAddress


# -- CuPy's exception classes, or stand-ins with their names and constructors ----------------------

@functools.cache                    # one class per run, so isinstance() checks compare like with like
def cuda_runtime_error_class():
    try:
        from cupy_backends.cuda.api.runtime import CUDARuntimeError

        return CUDARuntimeError
    except ImportError:
        class CUDARuntimeError(RuntimeError):        # CuPy: CUDARuntimeError(status) -> "name: text"
            _NAMES = {CUDA_ERROR_NO_DEVICE: "cudaErrorNoDevice: no CUDA-capable device is detected",
                      CUDA_ERROR_ILLEGAL_ADDRESS: "cudaErrorIllegalAddress: an illegal memory access was encountered"}

            def __init__(self, status: int):
                self.status = status
                super().__init__(self._NAMES[status])

        return CUDARuntimeError


@functools.cache
def out_of_memory_error_class():
    try:
        from cupy.cuda.memory import OutOfMemoryError

        return OutOfMemoryError
    except ImportError:
        class OutOfMemoryError(MemoryError):         # CuPy: OutOfMemoryError(size, total, limit=0)
            def __init__(self, size: int, total: int, limit: int = 0):
                super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")

        return OutOfMemoryError


def fake_cupy(device_count=None, count_error=None):
    """A `cupy` module exposing only what CudaBackend's start-up touches before the device."""
    def get_device_count():
        if count_error is not None:
            raise count_error
        return device_count

    cp = types.ModuleType("cupy")
    cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return cp


class _FakePool:
    def __init__(self):
        self.released = 0

    def free_bytes(self) -> int:
        return 0

    def free_all_blocks(self) -> None:
        self.released += 1


def backend_over_fake_device(free_bytes: int, fail_after: int):
    """A CudaBackend whose CuPy is a stand-in device: `free_bytes` free, and cudaMalloc failing
    (OutOfMemoryError) after `fail_after` successful allocations. Built without __init__, which
    would need a real device; every method used here is CudaBackend's own."""
    oom = out_of_memory_error_class()
    calls = {"n": 0}

    def allocate(shape, dtype):
        calls["n"] += 1
        if calls["n"] > fail_after:
            raise oom(int(np.prod(shape)) * np.dtype(dtype).itemsize, 0)
        return np.zeros(shape, dtype)

    cp = types.SimpleNamespace(
        zeros=allocate, empty=allocate,
        cuda=types.SimpleNamespace(memory=types.SimpleNamespace(OutOfMemoryError=oom),
                                   runtime=types.SimpleNamespace(memGetInfo=lambda: (free_bytes, 2 * free_bytes))))
    b = CudaBackend.__new__(CudaBackend)
    b.cp, b.pool, b.memory_limit_bytes = cp, _FakePool(), None
    b.device_index, b.device_name = 0, "stand-in GPU"
    b.kv_dtype = np.dtype(np.float16)
    b._weights, b._kv_bytes, b._workspace, b._rope_tables = weakref.WeakSet(), 0, {}, {}
    b.graphs = DecodeGraphs(b)                                # none captured: nothing to release for a cache
    return b, calls


# -- start-up: CuPy and driver failures --------------------------------------------------------

@pytest.mark.story("FT-009")
def test_missing_cupy_maps_to_cuda_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)          # `import cupy` raises ImportError
    with pytest.raises(CudaUnavailableError) as info:
        CudaBackend()
    assert info.value.code == "CUDA_UNAVAILABLE" and "CuPy is not installed" in info.value.message
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.story("FT-009")
def test_driver_error_maps_to_cuda_unavailable_and_keeps_the_cuda_error_name(monkeypatch):
    error = cuda_runtime_error_class()(CUDA_ERROR_NO_DEVICE)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count_error=error))
    with pytest.raises(WorkerError) as info:
        CudaBackend()
    assert info.value.code == "CUDA_UNAVAILABLE"
    assert "cudaErrorNoDevice" in info.value.message
    assert info.value.__cause__ is error
    assert info.value.to_dict() == {"code": "CUDA_UNAVAILABLE", "message": info.value.message}


@pytest.mark.story("FT-009")
def test_a_driver_reporting_no_gpu_is_cuda_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(device_count=0))
    with pytest.raises(WorkerError) as info:
        CudaBackend(device_index=0)
    assert info.value.code == "CUDA_UNAVAILABLE"


@pytest.mark.story("FT-009")
@pytest.mark.parametrize("count, index", [(1, 1), (2, 2), (2, 7), (1, -1)])
def test_an_index_outside_the_visible_gpus_is_device_not_found(monkeypatch, count, index):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(device_count=count))
    with pytest.raises(WorkerError) as info:
        CudaBackend(device_index=index)
    assert info.value.code == "CUDA_DEVICE_NOT_FOUND"
    assert str(index) in info.value.message and f"{count} visible" in info.value.message


# -- allocation: the pre-check and a failing cudaMalloc ---------------------------------------

@pytest.mark.story("FT-009")
def test_kv_cache_beyond_free_memory_is_refused_before_any_allocation():
    b, calls = backend_over_fake_device(free_bytes=1 << 20, fail_after=10**6)
    with pytest.raises(DeviceOOMError) as info:
        b.new_kv_cache(2, 4096, 4, 64)                       # 2*2*4096*4*64*2 = 8 MiB > 1 MiB
    err = info.value
    assert err.code == "VRAM_OOM" and err.device == "cuda:0"
    assert err.required_bytes == 2 * 2 * 4096 * 4 * 64 * 2 and err.available_bytes == 1 << 20
    assert calls["n"] == 0, "the pre-check must refuse before allocating"
    assert b._kv_bytes == 0


@pytest.mark.story("FT-009")
def test_cudamalloc_out_of_memory_becomes_vram_oom_and_gives_back_the_pool():
    """The pre-check passed (the device said it had room) but the cache's allocation still failed
    (one allocation holds every layer's K and V)."""
    b, calls = backend_over_fake_device(free_bytes=1 << 30, fail_after=0)
    with pytest.raises(DeviceOOMError) as info:
        b.new_kv_cache(4, 64, 2, 16)
    err = info.value
    assert err.code == "VRAM_OOM"
    assert isinstance(err.__cause__, out_of_memory_error_class())
    assert err.required_bytes == 4 * 2 * 64 * 2 * 16 * 2 and err.available_bytes >= 0
    assert calls["n"] == 1
    assert b._kv_bytes == 0, "a refused cache must not be counted"
    assert b.pool.released >= 1, "the pool's blocks must go back to the device after the failure"
    assert b.pool.released >= 1, "the pool's blocks must go back to the device after the failure"


# -- a request: the code reaches the engine's End event ------------------------------------------

def _run_engine(model):
    from stories.foundation._engine_fakes import FakeTokenizer, byte_vocab
    from worker.engine import Engine
    from worker.sampling import SamplingParams

    engine = Engine(model, FakeTokenizer(byte_vocab()), n_ctx=64)
    return list(engine.generate("hi", SamplingParams(max_tokens=4, temperature=0), cancel=threading.Event()))


@pytest.mark.story("FT-009")
def test_request_kv_oom_ends_the_job_with_vram_oom():
    from stories.foundation._engine_fakes import ScriptedModel

    class NoRoom(ScriptedModel):
        def new_cache(self, n_ctx):
            raise DeviceOOMError(f"KV cache ({n_ctx} positions) needs 9 bytes but only 3 are available",
                                 required_bytes=9, available_bytes=3, device="cuda:0")

    end = _run_engine(NoRoom([65, 66, 67], vocab_size=256))[-1]
    assert end.stop_reason == "error" and end.error_code == "VRAM_OOM"
    assert "9 bytes" in end.error and "3 are available" in end.error


@pytest.mark.story("FT-009")
def test_a_kernel_fault_ends_the_job_with_inference_failed_and_the_cuda_error():
    from stories.foundation._engine_fakes import ScriptedModel

    fault = cuda_runtime_error_class()(CUDA_ERROR_ILLEGAL_ADDRESS)

    class Faulting(ScriptedModel):
        def forward(self, ids, cache, start_pos):
            if start_pos > 0:
                raise fault
            return super().forward(ids, cache, start_pos)

    model = Faulting([65, 66, 67], vocab_size=256)
    events = _run_engine(model)
    end = events[-1]
    assert end.stop_reason == "error" and end.error_code == "INFERENCE_FAILED"
    assert "cudaErrorIllegalAddress" in end.error
    assert model.backend.live_caches == 0, "the KV cache must be freed when the job fails"


# -- GPU: the same mappings against the driver -------------------------------------------------

def _device_used() -> int:
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return total - free


@pytest.mark.gpu
@pytest.mark.story("FT-009")
def test_gpu_real_cudamalloc_failure_is_vram_oom_and_the_backend_recovers(monkeypatch):
    import cupy

    from stories.foundation._cuda_conformance import cuda_backend

    cuda_backend()                                           # skips cleanly without a GPU
    b = CudaBackend(kv_dtype="float16")
    gc.collect()
    b.release_cached_memory()
    baseline = _device_used()
    _free, total = cupy.cuda.runtime.memGetInfo()
    # Make the pre-check believe everything fits, so that cudaMalloc itself must fail.
    monkeypatch.setattr(b, "available_bytes", lambda: 1 << 62)
    n_ctx = total // (8 * 128 * 2) + 1024                    # one layer's K alone exceeds the device
    with pytest.raises(DeviceOOMError) as info:
        b.new_kv_cache(1, n_ctx, 8, 128)
    err = info.value
    assert err.code == "VRAM_OOM" and err.device == "cuda:0"
    assert isinstance(err.__cause__, cupy.cuda.memory.OutOfMemoryError)
    assert err.required_bytes >= n_ctx * 8 * 128 * 2 > total
    monkeypatch.undo()
    gc.collect()
    b.release_cached_memory()
    assert b.memory_report()["kv_cache"] == 0
    assert abs(_device_used() - baseline) <= 2 << 20, "device memory did not return to baseline"
    cache = b.new_kv_cache(1, 16, 2, 64)                     # the backend still serves
    q = b.asarray(np.ones((3, 2, 64), np.float32))
    out = b.to_host(b.attention(q, q, q, cache, 0, 0))
    np.testing.assert_allclose(out, 1.0, rtol=1e-3)          # attention over equal values of 1
    b.free_kv_cache(cache)


@pytest.mark.gpu
@pytest.mark.story("FT-009")
def test_gpu_first_missing_index_is_device_not_found():
    import cupy

    from stories.foundation._cuda_conformance import cuda_backend
    from worker.backend import get_backend

    cuda_backend()
    count = cupy.cuda.runtime.getDeviceCount()
    with pytest.raises(WorkerError) as info:
        get_backend(f"cuda:{count}")
    assert info.value.code == "CUDA_DEVICE_NOT_FOUND" and f"{count} visible" in info.value.message


@pytest.mark.gpu
@pytest.mark.story("FT-009")
def test_gpu_cuda_runtime_error_class_is_what_the_mapping_expects():
    """The stand-in above mimics this class: it exists, takes a status and names the cudaError."""
    from cupy_backends.cuda.api.runtime import CUDARuntimeError

    assert cuda_runtime_error_class() is CUDARuntimeError
    assert str(CUDARuntimeError(CUDA_ERROR_NO_DEVICE)).startswith("cudaErrorNoDevice")
    assert str(CUDARuntimeError(CUDA_ERROR_ILLEGAL_ADDRESS)).startswith("cudaErrorIllegalAddress")
