"""FT-021 KV cache allocation: one cache per request, sized for the request's context.

Acceptance: a model's cache has one K and one V array per layer of [n_ctx, n_kv_heads,
head_dim] (the kv head count and head size that gguf-py reads from the file), zero-filled,
float32; its byte size is 2 * layers * n_ctx * kv_heads * head_dim * 4 and shows in the
backend's memory report until freed; a cache of no positions is refused.
"""
import numpy as np
import pytest

from fixtures.tiny_models import ARCHS, gguf_py_reader, tiny_worker_model
from worker.backend.numpy import NumpyBackend
from worker.errors import InvalidParamsError


def gguf_py_attention_shape(arch):
    reader = gguf_py_reader(arch)
    arch = reader.fields["general.architecture"].contents()
    def get(key):
        return reader.fields[f"{arch}.{key}"].contents() if f"{arch}.{key}" in reader.fields else None
    heads = get("attention.head_count")
    return get("block_count"), get("attention.head_count_kv") or heads, get("embedding_length") // heads


@pytest.mark.story("FT-021")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_ctx", [1, 37, 256])
def test_model_cache_shape_follows_the_file(arch, n_ctx):
    model = tiny_worker_model(arch)
    layers, kv_heads, head_dim = gguf_py_attention_shape(arch)
    before = model.backend.memory_report()["kv_cache"]
    cache = model.new_cache(n_ctx)
    assert (cache.n_layers, cache.n_ctx, cache.n_kv_heads, cache.head_dim) == (layers, n_ctx, kv_heads, head_dim)
    assert len(cache.k) == len(cache.v) == layers
    for array in cache.k + cache.v:
        assert array.shape == (n_ctx, kv_heads, head_dim) and array.dtype == np.float32 and not array.any()
    expected = 2 * layers * n_ctx * kv_heads * head_dim * 4
    assert cache.nbytes == expected
    assert model.backend.memory_report()["kv_cache"] - before == expected
    model.backend.free_kv_cache(cache)
    assert model.backend.memory_report()["kv_cache"] == before
    assert cache.k == [] and cache.v == []


@pytest.mark.story("FT-021")
def test_caches_of_two_requests_are_independent():
    backend = NumpyBackend()
    a, b = backend.new_kv_cache(2, 8, 2, 4), backend.new_kv_cache(2, 8, 2, 4)
    a.k[0][0] = 1.0
    assert not b.k[0].any()


@pytest.mark.story("FT-021")
def test_empty_cache_is_refused():
    with pytest.raises(InvalidParamsError):
        NumpyBackend().new_kv_cache(2, 0, 2, 4)
