"""LT-012/LT-016 Backend.attention(rope=...): the NumPy reference's meaning of the option is rope(q),
rope(k) at positions start_pos.., then attention; the cache keeps the rotated keys, so a later chunk
attends over them as if the model had rotated them itself. Bit-for-bit equal on the CPU; the CUDA
backend's fused rotation is held to this by test_lt016_flash_attention_gpu.py and, on the host, by
test_lt016_attention_kernels_on_the_host.py."""
from __future__ import annotations

import numpy as np
import pytest

from worker.backend.numpy import NumpyBackend
from worker.config import RopeConfig

pytestmark = pytest.mark.story("LT-012", "LT-016")

ROPES = [
    RopeConfig(dim=64, base=10000.0, style="normal"),
    RopeConfig(dim=64, base=1000000.0, style="neox"),
    RopeConfig(dim=32, base=10000.0, style="neox"),                  # partial rotary dims
    RopeConfig(dim=64, base=150000.0, style="neox", scaling="yarn", factor=32.0, original_context=4096,
               truncate=False),
]


@pytest.mark.parametrize("rope", ROPES, ids=["normal", "neox", "neox-partial", "yarn"])
@pytest.mark.parametrize("chunks", [[5], [1], [7, 1, 1, 3], [64, 17]])
@pytest.mark.parametrize("window, sinks", [(0, False), (6, True)])
def test_rope_option_is_rope_then_attention(rope, chunks, window, sinks):
    b = NumpyBackend()
    rng = np.random.default_rng(len(chunks) + rope.dim + window)
    H, KVH, hd = 6, 2, 64
    n_ctx = sum(chunks) + 3
    fused, plain = b.new_kv_cache(1, n_ctx, KVH, hd), b.new_kv_cache(1, n_ctx, KVH, hd)
    sink = (rng.standard_normal(H) * 2).astype(np.float32) if sinks else None
    start = 0
    for T in chunks:
        q = rng.standard_normal((T, H, hd)).astype(np.float32)
        k = rng.standard_normal((T, KVH, hd)).astype(np.float32)
        v = rng.standard_normal((T, KVH, hd)).astype(np.float32)
        positions = np.arange(start, start + T)
        out = b.attention(q, k, v, fused, 0, start, sliding_window=window, sinks=sink, rope=rope)
        expect = b.attention(b.rope(q, positions, rope), b.rope(k, positions, rope), v, plain, 0, start,
                             sliding_window=window, sinks=sink)
        np.testing.assert_array_equal(out, expect)
        start += T
    np.testing.assert_array_equal(fused.k[0], plain.k[0])           # the cache holds the rotated keys
    np.testing.assert_array_equal(fused.v[0], plain.v[0])


def test_rope_none_changes_nothing():
    b = NumpyBackend()
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((4, n, 32)).astype(np.float32) for n in (4, 2, 2))
    one, two = b.new_kv_cache(1, 8, 2, 32), b.new_kv_cache(1, 8, 2, 32)
    np.testing.assert_array_equal(b.attention(q, k, v, one, 0, 2, rope=None), b.attention(q, k, v, two, 0, 2))
