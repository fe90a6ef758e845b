"""Quantized tensors as stored in GGUF, and their NumPy reference dequantization.

CONTRACT (other modules rely on this; keep it):

    QuantTensor(name, qtype, shape, raw)
        qtype: gguf.GGMLQuantizationType
        shape: tuple in NumPy (row-major) order, e.g. (n_out, n_in) for a 2-D weight,
               (n_expert, n_out, n_in) for stacked MoE experts. (GGUF stores ggml `ne`
               reversed; the reader converts.)
        raw:   np.ndarray[uint8], the tensor's bytes exactly as stored (a memmap view,
               never copied by the reader). Rows are contiguous: each row of the last
               dimension is a whole number of quant blocks.

    dequantize(t: QuantTensor) -> np.ndarray[float32] of t.shape
    FORMATS: dict[GGMLQuantizationType, QuantFormat]   the registry (worker/quant/formats.py):
             block_size, type_size, layout, dequantize_blocks, kernel suffix; one row per format

Also: dequantize_blocks(qtype, blocks[n, type_size] uint8) -> float32 [n, block_size], and
tensor_nbytes(qtype, shape). One module per format family: floats, legacy, kquants, mxfp4, ...
Every function is checked bit-for-bit against gguf-py (stories/llama/test_lt023_*).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from worker.quant.formats import FORMATS, QuantFormat

__all__ = ["QuantTensor", "QuantFormat", "FORMATS", "dequantize", "dequantize_blocks", "tensor_nbytes"]

# Blocks per call: bounds the temporaries of one step to a few tens of MB.
_CHUNK_BLOCKS = 1 << 16


@dataclass(frozen=True, eq=False)      # eq on ndarray fields would be ambiguous
class QuantTensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple
    raw: np.ndarray

    @property
    def format(self) -> QuantFormat:
        return FORMATS[self.qtype]

    @property
    def nbytes(self) -> int:
        return int(self.raw.size)

    @property
    def n_values(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def tensor_nbytes(qtype: GGMLQuantizationType, shape: tuple) -> int:
    """Stored bytes of a tensor (NumPy-order shape); the last dimension must be whole blocks."""
    fmt = FORMATS[qtype]
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    return n // fmt.block_size * fmt.type_size


def dequantize_blocks(qtype: GGMLQuantizationType, blocks: np.ndarray) -> np.ndarray:
    """uint8 [n, type_size] -> float32 [n, block_size]."""
    return FORMATS[GGMLQuantizationType(qtype)].dequantize_blocks(blocks)


def dequantize(t: QuantTensor) -> np.ndarray:
    """The tensor's values as float32 of shape t.shape (the stored bytes are not modified)."""
    qtype = GGMLQuantizationType(t.qtype)
    if qtype not in FORMATS:
        raise ValueError(f"{t.name}: no dequantizer for {qtype.name}")
    fmt = FORMATS[qtype]
    shape = tuple(int(s) for s in t.shape)
    if shape and shape[-1] % fmt.block_size:
        raise ValueError(f"{t.name}: row of {shape[-1]} is not a whole number of {qtype.name} blocks")
    expected = tensor_nbytes(qtype, shape)
    raw = np.asarray(t.raw).reshape(-1).view(np.uint8)
    if raw.size != expected:
        raise ValueError(f"{t.name}: {raw.size} bytes stored, {qtype.name} {shape} needs {expected}")
    blocks = raw.reshape(-1, fmt.type_size)
    out = np.empty((blocks.shape[0], fmt.block_size), dtype=np.float32)
    fn = fmt.dequantize_blocks
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[start:start + _CHUNK_BLOCKS] = fn(blocks[start:start + _CHUNK_BLOCKS])
    return out.reshape(shape)
