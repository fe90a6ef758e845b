"""FT-010 CUDA context initialization: the backend opens the requested GPU and says which it is.

Acceptance: CudaBackend(device_index=0) makes that device current, reports its name and compute
capability (every result names the device it ran on), compiles its kernels once per process and
device, and a second backend on the same device reuses them.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.story("FT-010")
def test_backend_names_the_gpu_it_runs_on():
    import cupy

    from worker.backend import get_backend

    b = get_backend("cuda:0")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    assert b.device_name == props["name"].decode() and b.device_name
    assert b.compute_capability == f"{props['major']}.{props['minor']}"
    assert cupy.cuda.runtime.getDevice() == 0
    assert b.memory_report()["device_name"] == b.device_name


@pytest.mark.story("FT-010")
def test_kernels_are_compiled_once_and_shared():
    from worker.backend import cuda_runtime
    from worker.backend.cuda import CudaBackend

    a, b = CudaBackend(), CudaBackend()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(a.to_host(a.add(a.asarray(x), a.asarray(x))), 2 * x)
    module = cuda_runtime._MODULES[(0, "elementwise.cu")]
    np.testing.assert_array_equal(b.to_host(b.gelu(b.asarray(np.zeros(3)))), np.zeros(3, np.float32))
    assert cuda_runtime._MODULES[(0, "elementwise.cu")] is module


@pytest.mark.story("FT-010")
def test_a_module_compiled_ahead_is_the_one_launches_use():
    """compile_module (scripts/gpu-bench.sh compiles every module ahead, into CuPy's disk cache): the module it
    compiles is the process's module of that file, so a launch after it compiles nothing more."""
    from worker.backend import cuda_runtime

    assert "moe_gemm.cu" in cuda_runtime.kernel_modules()
    cuda_runtime.compile_module("softmax.cu")
    module = cuda_runtime._MODULES[(0, "softmax.cu")]
    assert cuda_runtime._module(0, "softmax.cu") is module
    assert module.get_function("argmax") is not None
