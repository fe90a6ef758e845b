"""Random GPT-OSS expert layers for the mixture-of-experts tests: stored expert blocks with moderate scales
(values of order one, so that SwiGLU's clamp matters without saturating every unit), F32 router and biases."""
from __future__ import annotations

import gguf
import numpy as np

from fixtures.gguf_corrupt import random_blocks
from worker.quant import FORMATS, QuantTensor

Q = gguf.GGMLQuantizationType


def expert_blocks(qtype, shape: tuple, rng: np.random.Generator) -> QuantTensor:
    """A stacked expert weight [E, N, K] of random stored blocks scaled so that a product with an input of
    unit values has a standard deviation near 3 (values of order 3 / sqrt(K)): SwiGLU's clamp at 7 then
    bites on some units, not on all. MXFP4 block exponents vary by a factor of 2 either way."""
    n_blocks = int(np.prod(shape)) // gguf.GGML_QUANT_SIZES[qtype][0]
    blocks = random_blocks(qtype, n_blocks, rng)
    unit = 127 if qtype == Q.MXFP4 else 1.0
    if qtype == Q.MXFP4:
        blocks[:, 0] = unit
    else:
        for start in FORMATS[qtype].f16_fields:
            blocks[:, start:start + 2] = np.float16(unit).reshape(1).view(np.uint8)
    spread = float(np.std(gguf.quants.dequantize(blocks[:256].copy(), qtype)))     # value std at unit scale
    factor = 3.0 / np.sqrt(shape[-1]) / spread
    if qtype == Q.MXFP4:
        blocks[:, 0] = 127 + int(round(np.log2(factor))) + rng.integers(-1, 2, size=n_blocks)
    else:
        for start in FORMATS[qtype].f16_fields:
            scales = (factor * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16)
            blocks[:, start:start + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return QuantTensor("experts", qtype, tuple(shape), np.ascontiguousarray(blocks).reshape(-1))


def f32(values, name: str = "v") -> QuantTensor:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return QuantTensor(name, Q.F32, values.shape, values.reshape(-1).view(np.uint8))


def moe_layer(qtype, E: int, D: int, F: int, rng: np.random.Generator, *, favourite: list[int] | None = None):
    """(router, router bias, gate, gate bias, up, up bias, down, down bias) as QuantTensors; favourite:
    experts whose router bias (1000, the same for each) makes every token pick them first: with k of them,
    every token has the same k experts, weighted by its own logits as usual."""
    router_b = rng.standard_normal(E)
    router_b[list(favourite or [])] = 1e3
    return (f32(rng.standard_normal((E, D)) / np.sqrt(D) * 4), f32(router_b),
            expert_blocks(qtype, (E, F, D), rng), f32(rng.standard_normal((E, F)) * 0.1),
            expert_blocks(qtype, (E, F, D), rng), f32(rng.standard_normal((E, F)) * 0.1),
            expert_blocks(qtype, (E, D, F), rng), f32(rng.standard_normal((E, D)) * 0.1))
