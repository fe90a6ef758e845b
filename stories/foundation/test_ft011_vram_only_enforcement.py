"""FT-011 VRAM-only enforcement: weights, KV cache and activations live in plain device memory.

Acceptance: CuPy allocates through the backend's pool over cudaMalloc (never managed memory);
every weight, KV-cache and activation buffer of a loaded model reports cudaMemoryTypeDevice on
our GPU with no host mapping; weights keep their stored size (no float32 expansion on the
device); the upload from the memory map goes through a bounded pinned staging buffer, so the
host's peak resident memory while loading stays near the staging size, not the model's size.
"""
import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.exclusive_device]
DEVICE_MEMORY = 2          # cudaMemoryTypeDevice


def _attributes(ptr):
    import cupy

    return cupy.cuda.runtime.pointerGetAttributes(ptr)


@pytest.mark.story("FT-011")
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_buffer_of_a_running_model_is_device_memory(arch):
    from fixtures.gguf_corrupt import tiny_model_path
    from worker.backend.cuda import CudaBackend, allocator_is_device_pool
    from worker.gguf import GGUFModelFile
    from worker.models import load_model

    b = CudaBackend()
    gf = GGUFModelFile.open(tiny_model_path(arch))
    model = load_model(gf, b)
    cache = model.new_cache(32)
    logits = model.forward(np.array([1, 2, 3]), cache, 0)
    buffers = [w.raw for w in b._weights] + cache.k + cache.v + [logits]
    for buf in buffers:
        attrs = _attributes(buf.data.ptr)
        assert attrs.type == DEVICE_MEMORY and not attrs.hostPointer and attrs.device == 0
    assert allocator_is_device_pool()
    stored = sum(info.nbytes for info in gf.tensors.values())
    assert b.memory_report()["weights"] <= stored, "weights were expanded on the device"
    b.free_kv_cache(cache)


@pytest.mark.story("FT-011")
def test_upload_peak_host_memory_is_bounded_by_the_staging_buffer(tmp_path):
    """A 256 MiB tensor streamed from a memory-mapped file raises peak RSS by far less than its size."""
    import cupy

    from worker.backend.upload import PinnedStager, measure_peak_rss

    size = 256 << 20
    path = tmp_path / "blob.bin"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for _ in range(size // (16 << 20)):
            f.write(rng.integers(0, 256, 16 << 20, dtype=np.uint8).tobytes())
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    stager = PinnedStager(16 << 20)
    dst = cupy.empty(size, dtype=np.uint8)
    seen = []
    stats, _ = measure_peak_rss(lambda: stager.upload(mapped, dst, progress=lambda d, t: seen.append(d)))
    assert seen[-1] == size and seen == sorted(seen) and len(seen) == size // stager.chunk
    assert stats["peak_above_baseline"] < 64 << 20, stats          # 256 MiB would be resident without release
    sample = np.sort(rng.integers(0, size, 4096))
    np.testing.assert_array_equal(cupy.asnumpy(dst[cupy.asarray(sample)]), np.asarray(mapped[sample]))
