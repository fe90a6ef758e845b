"""FT-014 VRAM residency verification: every weight buffer is checked through its pointer attributes.

Acceptance: after loading, verify_residency() checks every live weight (device memory on our GPU,
no host pointer) and reports ok with the number checked; a buffer in managed memory is reported
as a violation naming the tensor (so the check can fail), which the server turns into unhealthy.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.story("FT-014")
def test_loaded_model_passes_residency_check():
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    b = CudaBackend()
    gf = GGUFModelFile.open(tiny_model_path("llama"))
    model = load_model(gf, b)
    result = b.verify_residency()
    assert result["ok"] and result["violations"] == []
    assert result["checked"] == len(list(b._weights)) >= len(model.tensor_names)
    assert b.check_residency()["ok"]          # the name the server's health loop calls


@pytest.mark.story("FT-014")
def test_managed_memory_buffer_is_a_violation():
    import cupy

    from worker.backend.cuda import CudaBackend, CudaWeight
    from worker.quant import FORMATS

    b = CudaBackend()
    managed = cupy.cuda.malloc_managed(4096)          # 4 KiB: far below the card's free memory
    raw = cupy.ndarray((4096,), dtype=np.uint8, memptr=managed)
    fmt = FORMATS[__import__("gguf").GGMLQuantizationType.F32]
    planted = CudaWeight("planted.weight", fmt.qtype, (1024,), raw, fmt.block_size, fmt.type_size)
    b._weights.add(planted)
    result = b.verify_residency()
    assert not result["ok"]
    assert [v["tensor"] for v in result["violations"] if "tensor" in v] == ["planted.weight"]
    b._weights.discard(planted)
    assert b.verify_residency()["ok"]
