"""FT-013 device memory RAII: what a request or a model allocates goes back when it is released.

Acceptance: allocating and freeing KV caches (and running forward passes) in a loop returns the
device's used memory to its baseline each time; a dropped model's weights are freed; the
backend's report accounts weights / kv_cache / workspace and the KV figure goes to zero.
"""
import gc

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.exclusive_device]


def _device_used(backend) -> int:
    """Device memory in live allocations: the driver's used bytes less what CuPy's pool caches free. A pool
    chunk that still holds a live buffer cannot be released, and its free part is reused by later allocations
    without the driver's figure moving."""
    import cupy

    _free, total = cupy.cuda.runtime.memGetInfo()
    return total - backend.device_free_bytes()


@pytest.mark.story("FT-013")
def test_kv_cache_alloc_free_cycles_return_to_baseline():
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    b = CudaBackend()
    model = load_model(GGUFModelFile.open(tiny_model_path("qwen2")), b)
    warm = model.new_cache(64)
    model.forward(np.array([1, 2, 3, 4]), warm, 0)
    for start in (4, 7):                     # the loop's 3-token pass, seen twice: its graph is captured
        model.forward(np.array([5, 6, 7]), warm, start)
    b.free_kv_cache(warm)
    gc.collect()
    b.release_cached_memory()
    baseline, workspace = _device_used(b), b.memory_report()["workspace"]
    for n_ctx in (128, 4096, 65536, 128):
        cache = model.new_cache(n_ctx)
        assert b.memory_report()["kv_cache"] == cache.nbytes > 0
        model.forward(np.array([5, 6, 7]), cache, 0)
        b.free_kv_cache(cache)
        del cache
        gc.collect()
        b.release_cached_memory()
        report = b.memory_report()
        assert report["kv_cache"] == 0
        # persistent scratch sized by the context (RoPE tables, attention's split partials) stays, counted as
        # workspace; so does the 3-token pass's graph, kept for the next cache (recaptured for a larger one).
        # The driver's figure is the whole device's: another process that frees memory meanwhile (a gate run's
        # other workers, between their tests) lowers it, so only memory held beyond the baseline counts (a gate run
        # on the H200 once saw 66 MiB less in use than the baseline, which the former two-sided check failed).
        grown = report["workspace"] - workspace
        held = _device_used(b) - baseline - grown
        assert held <= 2 << 20, (f"device memory did not return after n_ctx={n_ctx}: {held} bytes more in use than "
                                 f"the baseline and the workspace growth (the pool caches {b.pool.free_bytes()} free "
                                 f"bytes)")


@pytest.mark.story("FT-013")
def test_dropping_a_model_frees_its_weights():
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.backend.cuda import CudaBackend
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    b = CudaBackend()
    gc.collect()
    b.release_cached_memory()
    pool_before = b.pool.used_bytes()
    model = load_model(GGUFModelFile.open(tiny_model_path("phi3")), b)
    loaded = b.memory_report()["weights"]
    assert loaded > 0 and b.pool.used_bytes() >= pool_before + loaded
    del model
    gc.collect()
    b.release_cached_memory()
    assert b.memory_report()["weights"] == 0
    assert b.pool.used_bytes() <= pool_before + (1 << 20)
