"""FT-006 op boundary: the CUDA backend implements exactly the Backend interface of the reference.

Acceptance: every abstract op of worker.backend.base.Backend exists on CudaBackend with the same
parameters (names, order, keyword-only markers and defaults) as the NumPy reference, so a model
written against the interface runs unchanged on either; get_backend("cuda[:N]") selects it.
Runs without a GPU (the module imports CuPy only when a backend is created).
"""
import inspect

import pytest

from worker.backend.base import Backend
from worker.backend.cuda import CudaBackend
from worker.backend.numpy import NumpyBackend

OPS = sorted(name for name, member in vars(Backend).items() if callable(member) and not name.startswith("_"))


@pytest.mark.story("FT-006")
@pytest.mark.parametrize("op", OPS)
def test_cuda_op_has_the_interface_signature(op):
    ours = inspect.signature(getattr(CudaBackend, op))
    reference = inspect.signature(getattr(Backend, op))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
           [(p.name, p.kind, p.default) for p in reference.parameters.values()], f"{op}: {ours} vs {reference}"


@pytest.mark.story("FT-006")
def test_no_abstract_op_is_left_unimplemented():
    assert not getattr(CudaBackend, "__abstractmethods__", set())
    assert CudaBackend.name == "cuda" and NumpyBackend.name == "numpy"


@pytest.mark.story("FT-006")
def test_every_kernel_source_exists_beside_the_backend():
    from worker.backend.cuda import KERNEL_DIR, kernel_source

    names = {p.name for p in KERNEL_DIR.glob("*.cu")}
    assert {"matmul.cu", "attention.cu", "norm.cu", "rope.cu", "elementwise.cu", "softmax.cu"} <= names
    for name in names:
        source = kernel_source(name)
        assert '#include "' not in source, f"{name}: a local header was not inlined"
        assert 'extern "C" __global__' in source
