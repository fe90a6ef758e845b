"""CUDA backend: the Backend interface on one NVIDIA GPU through CuPy RawModules.

This module is the op boundary the models call (shape checks, the choice of kernel); the rest
lives beside it:
    cuda_runtime.py   the device check, NVRTC modules, kernel argument widths, the memory pool
    cuda_memory.py    weights in their stored format, KV caches, workspace accounting, residency
    cuda_graph.py     the captured single-token decode step, replayed with no host work per op
    kernels/<name>.cu and kernels/<name>.py   each kernel file and its launcher

Products: T <= 4 tokens (decode) use the fused dequantize + matrix-vector kernel; longer inputs
(prefill) dequantize the weight tile by tile into a bounded workspace and multiply with cuBLAS on
TF32 tensor cores in three split terms, float32-like (kernels/matmul.py prefill_product;
M0_CUDA_PREFILL=fp32: float32 sgemm). The KV cache is float16 by default
(kv_dtype="float32" for exactness).
Forward passes run through captured CUDA graphs (`run_forward`, cuda_graph.py).
"""
from __future__ import annotations

import math
import os

import numpy as np

from worker.backend.base import Array, Backend, KVCache
from worker.backend.cuda_graph import DecodeGraphs
from worker.backend.cuda_memory import _KERNEL_FORMAT, CUDA_MEMORY_TYPE_DEVICE, CudaMemory, CudaWeight
from worker.backend.cuda_runtime import (
    KERNEL_DIR,
    NULL,
    CudaUnavailableError,
    _module,
    allocator_is_device_pool,
    device_pool,
    kernel_source,
    require_cuda_device,
)
from worker.backend.kernels import attention as attention_kernels
from worker.backend.kernels import elementwise, matmul, mmq, norm, vecdot
from worker.backend.kernels import moe as moe_kernels
from worker.backend.kernels import rope as rope_kernels
from worker.backend.kernels import softmax as argmax_kernels
from worker.backend.kernels.attention import ATT_MAX_HEAD_DIM
from worker.backend.kernels.matmul import MATVEC_MAX_T
from worker.config import RopeConfig
from worker.errors import InvalidParamsError, PromptTooLongError

TILE_MAX_BYTES = 64 << 20             # prefill dequantization workspace bound (a tile row: hi and lo of K weights)
PINNED_COPY_MIN = 4096                # to_host: arrays of at least this many floats go through pinned memory
MATVEC_PATHS = {"q8x2": 2, "q8": 1, "float": 0}     # decode product path -> int8 activation terms


def product_path(k, fmt: str, T: int, N: int, K: int) -> tuple[str, int]:
    """The kernel a product of T tokens on an [N, K] weight (or expert) of format `fmt` takes on backend `k`
    (its matvec_terms and prefill_q8), and the int8 terms of its activations (0: float): "mmvq" (int8
    activations, kernels/vecdot.py), "matvec" (float, kernels/matmul.py: few tokens, or few rows), "bf16" or "mma"
    (Q8_0 on tensor cores, kernels/mmq.py; mma on two int8 terms unless matvec_terms says one) or "tf32x3"
    (dequantized tiles and split TF32 products, matmul.prefill_product). CudaBackend.matmul follows it; the
    conformance checks read it to hold each product to its path's bound."""
    terms = vecdot.uses_int8_activations(k, fmt, T)
    if terms:
        return "mmvq", terms
    if T <= MATVEC_MAX_T or matmul.few_rows(N, K, T):
        return "matvec", 0
    if mmq.uses_bf16(k.prefill_q8, fmt):
        return "bf16", 0
    if mmq.uses_mma(k.prefill_q8, fmt, T):
        return "mma", k.matvec_terms or 2
    return "tf32x3", 0


__all__ = [
    "ATT_MAX_HEAD_DIM",
    "CUDA_MEMORY_TYPE_DEVICE",
    "KERNEL_DIR",
    "MATVEC_MAX_T",
    "NULL",
    "TILE_MAX_BYTES",
    "_KERNEL_FORMAT",
    "CudaBackend",
    "CudaUnavailableError",
    "CudaWeight",
    "_module",
    "allocator_is_device_pool",
    "device_pool",
    "kernel_source",
    "require_cuda_device",
]


class CudaBackend(CudaMemory, Backend):
    name = "cuda"
    # A 512-token chunk takes milliseconds on the GPU, and each chunk re-reads every weight tile:
    # larger chunks than the CPU's keep cancellation prompt and prefill fast.
    prefill_chunk_tokens = 512

    def __init__(self, device_index: int = 0, memory_limit_bytes: int | None = None, *,
                 kv_dtype: str = "float16", staging_bytes: int = 16 << 20,
                 poison_outputs: bool = False, sync_each_op: bool = False, decode_graphs: bool | None = None,
                 matvec: str | None = None):
        cp = require_cuda_device(device_index)
        if kv_dtype not in ("float16", "float32"):
            raise ValueError(f"kv_dtype must be float16 or float32, got {kv_dtype!r}")
        self.cp = cp
        self.device_index = device_index
        self.device = cp.cuda.Device(device_index)
        self.device.use()
        props = cp.cuda.runtime.getDeviceProperties(device_index)
        self.device_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        self.compute_capability = f"{props['major']}.{props['minor']}"
        self.pool = device_pool()
        self.memory_limit_bytes = memory_limit_bytes
        self.kv_dtype = np.dtype(kv_dtype)
        self.poison_outputs = poison_outputs
        self.sync_each_op = sync_each_op
        # Decode products: "q8x2" (int8 activations in two terms, float-like), "q8" (llama.cpp's
        # single Q8_1 term) or "float" (the dequantize-to-float matvec); kernels/vecdot.py.
        matvec = matvec or os.environ.get("M0_CUDA_MATVEC", "q8x2")
        if matvec not in MATVEC_PATHS:
            raise ValueError(f"matvec must be one of {sorted(MATVEC_PATHS)}, got {matvec!r}")
        self.matvec_terms = MATVEC_PATHS[matvec]
        # Prefill products of Q8_0 weights: "auto" (the default: int8 tensor cores on the decode products' int8
        # activations, kernels/mmq.py, up to mmq.MMQ_AUTO_MAX_T tokens; matmul.prefill_product above), "tf32x3"
        # or "mma" (one path at every T), or "bf16" (mmq_bf16_q8_0 at every T: BF16 tensor cores).
        self.prefill_q8 = os.environ.get("M0_CUDA_PREFILL_Q8", "auto")
        mmq.uses_mma(self.prefill_q8, "q8_0", 1)      # a clear error for an unknown path, at start
        self.launch_serial = 0
        self._init_memory(staging_bytes)
        self._functions: dict[tuple[str, str], object] = {}
        # Single-token steps replay a captured graph (cuda_graph.py); M0_CUDA_GRAPHS=0 turns that off.
        # A synchronize after every launch cannot be captured.
        if decode_graphs is None:
            decode_graphs = os.environ.get("M0_CUDA_GRAPHS", "1") != "0"
        self.graphs = DecodeGraphs(self, enabled=decode_graphs and not sync_each_op)

    def asarray(self, host: np.ndarray) -> Array:
        return self.cp.asarray(np.asarray(host, dtype=np.float32))

    def to_host(self, x: Array) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return np.array(x, dtype=np.float32, copy=True)
        if x.dtype == np.float32 and x.size >= PINNED_COPY_MIN:
            # a logits row each token: into page-locked memory (CuPy's pinned pool, back to the pool
            # when the array goes) the copy runs at full speed, with no staging through a bounce buffer
            x = self.cp.ascontiguousarray(x)
            mem = self.cp.cuda.alloc_pinned_memory(x.nbytes)
            out = np.frombuffer(mem, np.float32, x.size).reshape(x.shape)
            x.get(out=out)
            return out
        return self.cp.asnumpy(x).astype(np.float32, copy=False)

    def synchronize(self) -> None:
        self.cp.cuda.Device(self.device_index).synchronize()

    def run_forward(self, forward, ids: np.ndarray, cache: KVCache, start_pos: int) -> Array:
        """forward(ids, cache, start_pos) through the graphs of cuda_graph.py: a single token replays the
        decode graph, a prefill chunk of a token count the backend has seen before replays its own; a graph
        serves every cache of its geometry up to the capacity it was captured for."""
        if self.graphs.enabled:
            return self.graphs.step(forward, ids, cache, start_pos)
        return forward(ids, cache, start_pos)

    # -- helpers -------------------------------------------------------------------------------
    def _fn(self, module: str, name: str):
        fn = self._functions.get((module, name))
        if fn is None:                  # looked up once: a decode step launches hundreds of kernels
            fn = self._functions[(module, name)] = _module(self.device_index, module).get_function(name)
        return fn

    def _launch(self, module: str, name: str, grid, block, args, *, keeps_quantized_input: bool = False) -> None:
        """Launch kernel `name` of `module` (grid: blocks, or a tuple of them per dimension).
        keeps_quantized_input: the kernel writes nothing a quantized product input could be
        (kernels/vecdot.py reuses one only until another kernel runs)."""
        grid = tuple(int(g) for g in grid) if isinstance(grid, tuple) else (int(grid),)
        self._fn(module, name)(grid, (int(block),), args)
        if not keeps_quantized_input:
            self.launch_serial += 1
        if self.sync_each_op:
            self.synchronize()

    def _out(self, shape):
        if self.poison_outputs:
            return self.cp.full(shape, np.nan, dtype=np.float32)
        return self.cp.empty(shape, dtype=np.float32)

    def _act(self, x):
        """An activation as a contiguous float32 device array."""
        cp = self.cp
        if isinstance(x, cp.ndarray):
            if x.dtype != np.float32:
                x = x.astype(np.float32)
            return cp.ascontiguousarray(x)
        return cp.asarray(np.ascontiguousarray(x, dtype=np.float32))

    def _vector(self, w, what: str):
        """A 1-D float32 device view of a (small) weight: zero-copy for F32, dequantized otherwise."""
        if isinstance(w, CudaWeight):
            if w.qtype.name == "F32":
                return w.raw.view(np.float32)
            return self._dequantize(w, 0, int(np.prod(w.shape[:-1], dtype=np.int64)) if w.ndim > 1 else 1).reshape(-1)
        return self._act(w).reshape(-1)

    def _dequantize(self, w: CudaWeight, first_row: int, n_rows: int, out=None, raw=None):
        """Rows [first_row, first_row+n_rows) of a weight (viewed as [rows, K]) as float32."""
        K = w.shape[-1] if w.ndim else 1
        out = self._out((n_rows, K)) if out is None else out
        matmul.dequant_rows(self, w, w.raw if raw is None else raw, NULL, first_row, out, n_rows, K)
        return out

    def _rows(self, x):
        D = x.shape[-1]
        return (x.size // D if D else 0), D

    # -- ops -----------------------------------------------------------------------------------
    def embedding(self, table, ids: np.ndarray) -> Array:
        ids_host = np.asarray(self.cp.asnumpy(ids) if isinstance(ids, self.cp.ndarray) else ids).reshape(-1)
        n_rows, D = table.shape[0], table.shape[-1]
        if ids_host.size and (ids_host.min() < 0 or ids_host.max() >= n_rows):
            bad = int(ids_host[(ids_host < 0) | (ids_host >= n_rows)][0])
            raise InvalidParamsError(f"token id {bad} outside the table's rows [0, {n_rows})", field="ids")
        if not isinstance(table, CudaWeight):
            return self._act(table)[self.cp.asarray(ids_host.astype(np.int64))]
        T = ids_host.size
        out = self._out((T, D))
        if T:
            dev_ids = self.graphs.device_ids(ids_host, n_rows)
            if dev_ids is None:
                dev_ids = self.cp.asarray(ids_host.astype(np.int32))
            matmul.dequant_rows(self, table, table.raw, dev_ids, 0, out, T, D)
        return out

    def matmul(self, x: Array, w, bias=None, expert: int | None = None) -> Array:
        x = self._act(x)
        squeeze = x.ndim == 1
        x2 = x.reshape(1, -1) if squeeze else x.reshape(-1, x.shape[-1])
        T, K = x2.shape
        if not isinstance(w, CudaWeight):                 # a plain float array (tests)
            dense = self._act(w)
            dense = dense[expert] if expert is not None else dense
            y = x2 @ dense.T
            if bias is not None:
                b = self._act(bias)
                y = y + (b[expert] if expert is not None and b.ndim == 2 else b)
            return y.reshape(x.shape[:-1] + (y.shape[-1],))
        if expert is not None:
            if w.ndim != 3:
                raise InvalidParamsError(f"{w.name}: expert={expert} needs a 3-D [E, N, K] weight, got {w.shape}",
                                         field="expert")
            E, N, Kw = w.shape
            if not 0 <= expert < E:
                raise InvalidParamsError(f"expert {expert} outside [0, {E}) for {w.name}", field="expert")
            raw = w.raw[expert * N * w.row_bytes:(expert + 1) * N * w.row_bytes]
        else:
            if w.ndim != 2:
                raise InvalidParamsError(f"{w.name}: matmul needs a 2-D weight, got {w.shape}", field="w")
            N, Kw = w.shape
            raw = w.raw
        if Kw != K:
            raise InvalidParamsError(f"{w.name}: x has {K} columns, weight rows have {Kw}", field="x")
        b = None
        if bias is not None:
            b = self._vector(bias, "bias")
            if expert is not None and b.size == N * (w.shape[0]):
                b = b[expert * N:(expert + 1) * N]
            if b.size != N:
                raise InvalidParamsError(f"bias of {b.size} values for {N} outputs", field="bias")
        y = self._out((T, N))
        path, terms = product_path(self, w.format, T, N, K)
        if path == "mmvq":
            xq, xds = vecdot.quantized_input(self, x, x2, T, K, terms)
            vecdot.mmvq(self, w.format, raw, w.row_bytes, xq, xds, y, N, K, T, terms, bias=b)
        elif path == "matvec":
            matmul.matvec(self, w, raw, x2, b if b is not None else NULL, y, N, K, T)
        elif path == "bf16":
            mmq.product_bf16(self, raw, w.row_bytes, x2, y, T, N, K, bias=b)
        elif path == "mma":
            xq, xds = vecdot.quantized_input(self, x, x2, T, K, terms)
            mmq.product(self, raw, w.row_bytes, xq, xds, y, T, N, K, terms, bias=b)
        else:
            matmul.prefill_product(self, w, raw, x2, y, b, tile_bytes=TILE_MAX_BYTES)
        return y.reshape(N) if squeeze else y.reshape(x.shape[:-1] + (N,))

    def _int8_segment(self, w, bias, T: int, K: int):
        """(fmt, raw, row_bytes, N, bias) of a decode product x [T, K] @ w.T on int8 activations (kernels/
        vecdot.py), or None where matmul would take another path (or refuse the shapes)."""
        if not (isinstance(w, CudaWeight) and w.ndim == 2 and w.shape[1] == K
                and vecdot.uses_int8_activations(self, w.format, T)):
            return None
        N = w.shape[0]
        b = None if bias is None else self._vector(bias, "bias")
        if b is not None and b.size != N:
            return None
        return (w.format, w.raw, w.row_bytes, N, b)

    def matmul_add(self, x: Array, w, bias=None, *, residual: Array) -> Array:
        """Decode: the residual added in the int8 product's epilogue (one launch); else matmul, then add."""
        x, r = self._act(x), self._act(residual)
        T, K = x.shape if x.ndim == 2 else (0, 0)
        segment = self._int8_segment(w, bias, T, K) if T else None
        if segment is None or r.shape != (T, segment[3]):
            return self.add(r, self.matmul(x, w, bias))
        fmt, raw, row_bytes, N, b = segment
        terms = self.matvec_terms
        xq, xds = vecdot.quantized_input(self, x, x, T, K, terms)
        y = self._out((T, N))
        vecdot.mmvq(self, fmt, raw, row_bytes, xq, xds, y, N, K, T, terms, bias=b, residual=r)
        return y

    def matmuls(self, x: Array, weights: list, biases: list | None = None) -> list:
        """Decode: the products of one int8-quantized input in one launch (vecdot.mmvq_segments); else
        one matmul each."""
        biases = [None] * len(weights) if biases is None else list(biases)
        x = self._act(x)
        T, K = x.shape if x.ndim == 2 else (0, 0)
        segments = [self._int8_segment(w, b, T, K) for w, b in zip(weights, biases)] if T else []
        if len(biases) != len(weights) or not 1 < len(weights) <= vecdot.MMVQ_MAX_SEGMENTS \
                or len(segments) != len(weights) or any(s is None for s in segments):
            return super().matmuls(x, weights, biases)
        terms = self.matvec_terms
        xq, xds = vecdot.quantized_input(self, x, x, T, K, terms)
        ys = [self._out((T, s[3])) for s in segments]
        vecdot.mmvq_segments(self, xq, xds, K, T, terms, [(*s, y) for s, y in zip(segments, ys)])
        return ys

    # M0_CUDA_FUSED_SWIGLU=0: gate/up as one mmvq_segments launch and SwiGLU as its own (to compare)
    fused_swiglu = os.environ.get("M0_CUDA_FUSED_SWIGLU", "1") != "0"

    def matmul_swiglu(self, x: Array, w_gate, w_up) -> Array:
        """Decode: gate and up products, SwiGLU and the down product's int8 input in one launch
        (vecdot.mmvq_swiglu); else matmuls, then swiglu."""
        x = self._act(x)
        T, K = x.shape if x.ndim == 2 else (0, 0)
        gate, up = (self._int8_segment(w, None, T, K) if T and self.fused_swiglu else None for w in (w_gate, w_up))
        if gate is None or up is None or gate[0] != up[0] or gate[2:4] != up[2:4] or gate[3] % vecdot.QUANT_BLOCK:
            return super().matmul_swiglu(x, w_gate, w_up)
        fmt, F, terms = gate[0], gate[3], self.matvec_terms
        xq, xds = vecdot.quantized_input(self, x, x, T, K, terms)
        yq, yds = vecdot.output_buffers_besides(self, xq, T, F)
        y = self._out((T, F))
        vecdot.mmvq_swiglu(self, fmt, gate[1], up[1], gate[2], xq, xds, y, yq, yds, F, K, T, terms)
        vecdot.remember_quantized(self, y, T, F, yq, yds, terms)
        return y

    def add(self, a: Array, b: Array) -> Array:
        a, b = self._act(a), self._act(b)
        if a.shape != b.shape:
            a, b = (self.cp.ascontiguousarray(t) for t in self.cp.broadcast_arrays(a, b))
        y = self._out(a.shape)
        elementwise.add(self, a, b, y, a.size)
        return y

    def mul(self, a: Array, b: Array) -> Array:
        a, b = self._act(a), self._act(b)
        if a.shape == b.shape:
            y = self._out(a.shape)
            elementwise.mul(self, a, b, y, a.size)
            return y
        shape = np.broadcast_shapes(a.shape, b.shape)
        if a.shape != shape:
            a, b = b, a                                   # a is the full-shape operand
        if a.shape == shape and a.ndim >= 1 and b.size == a.shape[-1] and b.shape[-1:] == a.shape[-1:] \
                and all(s == 1 for s in b.shape[:-1]):
            y = self._out(shape)
            elementwise.mul_cols(self, a, b, y, a.size, a.shape[-1])
            return y
        if a.shape == shape and a.ndim >= 2 and b.shape[-1] == 1 and b.size * a.shape[-1] == a.size \
                and b.shape[:-1] == a.shape[:-1]:
            y = self._out(shape)
            elementwise.mul_rows(self, a, b, y, a.size, a.shape[-1])
            return y
        a, b = (self.cp.ascontiguousarray(t) for t in self.cp.broadcast_arrays(a, b))
        y = self._out(a.shape)
        elementwise.mul(self, a, b, y, a.size)
        return y

    def rmsnorm(self, x: Array, weight, eps: float) -> Array:
        x = self._act(x)
        rows, D = self._rows(x)
        w = self._vector(weight, "norm weight")
        y = self._out(x.shape)
        q8 = vecdot.fused_output_buffers(self, rows, D)       # decode: the next products' int8 input too
        if q8:
            norm.rmsnorm_q8(self, x, w, y, *q8, rows, D, eps)
            vecdot.remember_quantized(self, y, rows, D, *q8)
        else:
            norm.rmsnorm(self, x, w, y, rows, D, eps)
        return y

    def layernorm(self, x: Array, weight, bias, eps: float) -> Array:
        x = self._act(x)
        rows, D = self._rows(x)
        w, b = self._vector(weight, "norm weight"), self._vector(bias, "norm bias")
        y = self._out(x.shape)
        norm.layernorm(self, x, w, b, y, rows, D, eps)
        return y

    def _rope_table(self, rope: RopeConfig, n_positions: int):
        from worker.rope import rope_cos_sin

        n_positions = max(n_positions, self.graphs.positions_needed)
        entry = self._rope_tables.get(rope)
        if entry is None or entry[0] < n_positions:
            n = max(n_positions, 2 * entry[0] if entry else 0, 1024)
            cos, sin = rope_cos_sin(np.arange(n), rope)
            self._rope_tables.pop(rope, None)
            # persistent, like the scratch buffers: never from the private pool of a graph being captured,
            # where it would outlive that graph's release uncounted
            tables = [self._persistent(f"RoPE table of {n} positions", t.shape, np.float32) for t in (cos, sin)]
            for table, host in zip(tables, (cos, sin)):
                table.set(np.ascontiguousarray(host, dtype=np.float32))
            entry = (n, *tables)
            self._rope_tables[rope] = entry
        return entry

    def rope(self, x: Array, positions: np.ndarray, rope: RopeConfig) -> Array:
        if rope.style not in ("normal", "neox"):
            raise ValueError(f"unknown rope style {rope.style!r}: expected normal or neox")
        x = self._act(x)
        T, H, hd = x.shape
        if rope.dim % 2 or rope.dim > hd:
            raise ValueError(f"rope dim {rope.dim} must be even and at most head_dim {hd}")
        if isinstance(positions, self.cp.ndarray):
            positions = self.cp.asnumpy(positions)
        pos = np.asarray(positions).reshape(-1)
        if pos.size != T:
            raise ValueError(f"{pos.size} positions for {T} tokens")
        if T and pos.min() < 0:
            raise InvalidParamsError("negative rope position", field="positions")
        y = self._out(x.shape)
        if T == 0:
            return y
        _, cos, sin = self._rope_table(rope, int(pos.max()) + 1)
        self.graphs.hold(cos, sin)
        base = int(pos[0])
        dev_pos = self.graphs.device_positions(pos)
        if dev_pos is None:
            contiguous = np.array_equal(pos, np.arange(base, base + T))
            dev_pos = NULL if contiguous else self.cp.asarray(pos.astype(np.int32))
        rope_kernels.rope(self, x, y, cos, sin, dev_pos, base, T, H, hd, rope.dim, rope.style == "neox")
        return y

    def attention(self, q: Array, k: Array, v: Array, cache: KVCache, layer: int, start_pos: int, *,
                  sliding_window: int = 0, sinks=None, scale: float | None = None,
                  rope: RopeConfig | None = None) -> Array:
        q, k, v = self._act(q), self._act(k), self._act(v)
        T, H, hd = q.shape
        KVH = k.shape[1]
        end = start_pos + T
        if start_pos < 0 or end > cache.n_ctx:
            raise PromptTooLongError(
                f"positions {start_pos}..{end - 1} do not fit a KV cache of {cache.n_ctx} positions", field="n_ctx")
        if H % KVH:
            raise ValueError(f"{H} query heads cannot share {KVH} KV heads evenly")
        if hd > ATT_MAX_HEAD_DIM:
            raise ValueError(f"head_dim {hd} exceeds the attention kernel's {ATT_MAX_HEAD_DIM}")
        if k.shape != (T, KVH, hd) or v.shape != (T, KVH, hd) or cache.k[layer].shape[1:] != (KVH, hd):
            raise ValueError(f"k/v shapes {k.shape}/{v.shape} do not match q {q.shape} and the cache")
        kvt = "f16" if cache.k[layer].dtype == np.float16 else "f32"
        dev_start = self.graphs.device_start(start_pos)
        sink = self._vector(sinks, "sinks") if sinks is not None else None
        if sink is not None and sink.size != H:
            raise ValueError(f"{sink.size} sinks for {H} heads")
        tables = None
        if rope is not None and attention_kernels.decodes(T, hd):   # rotated inside the decode kernel
            if rope.style not in ("normal", "neox"):
                raise ValueError(f"unknown rope style {rope.style!r}: expected normal or neox")
            if rope.dim % 2 or rope.dim > hd:
                raise ValueError(f"rope dim {rope.dim} must be even and at most head_dim {hd}")
            _, cos, sin = self._rope_table(rope, end)
            self.graphs.hold(cos, sin)
            tables = (cos, sin, rope.dim, rope.style == "neox")
        elif rope is not None:              # prefill: every query tile reads each key, so rotate them once first
            positions = np.arange(start_pos, end)
            q, k = self.rope(q, positions, rope), self.rope(k, positions, rope)
        scale = 1.0 / math.sqrt(hd) if scale is None else scale
        out = self._out((T, H * hd))
        q8 = None
        if attention_kernels.decodes(T, hd) and hd % 32 == 0:
            q8 = vecdot.fused_output_buffers(self, T, H * hd)     # the output product's input
        if T:
            # in a capture: the cache's addresses from the backend's table (cuda_graph.py), the grid for its capacity
            kv_table, n_ctx = self.graphs.kv_table(cache)
            attention_kernels.attention(self, kvt, q, k, v, cache.k[layer], cache.v[layer],
                                        sink if sink is not None else NULL, out, T, H, KVH, hd, start_pos, dev_start,
                                        max(0, sliding_window), scale, n_ctx=n_ctx, rope=tables, q8=q8,
                                        kv_table=kv_table, layer=layer)
        if q8:
            vecdot.remember_quantized(self, out, T, H * hd, *q8)
        return out

    def mixture_of_experts(self, x: Array, router, router_bias, gate, gate_bias, up, up_bias, down, down_bias,
                           n_used: int, *, limit: float | None = None, alpha: float | None = None) -> Array:
        """Experts chosen and run on the device, no host round trip, so a captured graph holds the whole
        pass: a decode token through vecdot.py's expert slots; T >= 2 tokens grouped by expert
        (kernels/moe.py: moe_plan, then moe_gemm.cu's tensor-core products). Other cases (formats
        without grouped kernels, odd shapes; the reason in moe_host_reason): the host routing of
        Backend.mixture_of_experts."""
        x = self._act(x)
        experts_w = (gate, up, down)
        T, D = self._rows(x)
        E, F = (gate.shape[0], gate.shape[1]) if isinstance(gate, CudaWeight) and gate.ndim == 3 else (0, 0)
        if T >= 2:
            self.moe_host_reason = moe_kernels.grouped_unsupported(gate, up, down, D, n_used)
        if T >= 2 and self.moe_host_reason is None:     # route, sort the pairs by expert into tiles, products, sum
            cp = self.cp
            n_pairs = T * n_used
            tile_rows = moe_kernels.tile_rows_for(n_pairs, E)
            n_tiles = moe_kernels.max_tiles(n_pairs, E, tile_rows)
            logits = self.matmul(x, router, router_bias)
            experts = cp.empty((T, n_used), dtype=np.int32)
            weights = cp.empty((T, n_used), dtype=np.float32)
            moe_kernels.route(self, logits, experts, weights, T, E, n_used)
            order, pos = cp.empty((n_pairs,), dtype=np.int32), cp.empty((n_pairs,), dtype=np.int32)
            tiles = cp.empty((n_tiles, 4), dtype=np.int32)
            moe_kernels.plan(self, experts, order, pos, tiles, n_pairs, E, n_tiles, tile_rows)
            biases = [self._vector(b, "expert bias") if b is not None else None
                      for b in (gate_bias, up_bias, down_bias)]
            h = self._out((n_pairs, F))
            moe_kernels.gate_up(self, gate.format, x.reshape(T, D), order, n_used, tiles, n_tiles, tile_rows,
                                gate.raw, up.raw, gate.row_bytes, F * gate.row_bytes, biases[0], biases[1], h, F, D,
                                clamped=not (limit is None and alpha is None), limit=limit, alpha=alpha)
            y = self._out((n_pairs, D))
            moe_kernels.down(self, down.format, h, tiles, n_tiles, tile_rows, down.raw, down.row_bytes,
                             D * down.row_bytes, biases[2], y, D, F)
            out = self._out((T, D))
            moe_kernels.combine_rows(self, y, pos, weights, out, T, n_used, D)
            return out.reshape(x.shape)
        if not (T == 1 and self.matvec_terms and n_used <= 32 and D % 32 == 0 and F % 32 == 0 and E
                and all(isinstance(w, CudaWeight) and w.ndim == 3 and w.format in vecdot.VECDOT_FORMATS
                        for w in experts_w)
                and up.shape == gate.shape and down.shape == (E, D, F) and gate.shape[2] == D):
            return super().mixture_of_experts(x, router, router_bias, gate, gate_bias, up, up_bias, down, down_bias,
                                              n_used, limit=limit, alpha=alpha)
        terms = self.matvec_terms
        logits = self.matmul(x, router, router_bias)
        x2 = x.reshape(1, D)
        xq, xds = vecdot.quantized_input(self, x, x2, 1, D, terms)     # before the routing launch
        experts = self.cp.empty((n_used,), dtype=np.int32)
        weights = self.cp.empty((n_used,), dtype=np.float32)
        moe_kernels.route(self, logits, experts, weights, 1, E, n_used)
        biases = [self._vector(b, "expert bias") if b is not None else None for b in (gate_bias, up_bias, down_bias)]
        h = self._out((n_used, F))
        clamped = not (limit is None and alpha is None)
        q8 = vecdot.fused_output_buffers(self, n_used, F)
        if q8 and self.fused_swiglu and gate.format == up.format and gate.row_bytes == up.row_bytes:
            # the chosen experts' gate, up and SwiGLU in one launch, also writing the down product's int8 input
            hq, hds = vecdot.output_buffers_besides(self, xq, n_used, F)
            vecdot.mmvq_swiglu(self, gate.format, gate.raw, up.raw, gate.row_bytes, xq, xds, h, hq, hds, F, D, 1,
                               terms, slots=n_used, expert_ids=experts, expert_bytes=F * gate.row_bytes,
                               bias_gate=biases[0], bias_up=biases[1], clamped=clamped, limit=limit, alpha=alpha)
        else:
            g, u = self._out((n_used, F)), self._out((n_used, F))
            for w, b, y in ((gate, biases[0], g), (up, biases[1], u)):
                vecdot.mmvq(self, w.format, w.raw, w.row_bytes, xq, xds, y, F, D, 1, terms, bias=b,
                            bias_per_expert=True, slots=n_used, expert_ids=experts, expert_bytes=F * w.row_bytes)
            if q8:
                hq, hds = q8[0], q8[1]
                elementwise.swiglu_q8(self, g, u, h, hq, hds, terms, n_used * F, clamped, limit, alpha)
            else:                               # more than MMVQ_MAX_T experts a token
                if clamped:
                    elementwise.swiglu_clamped(self, g, u, h, n_used * F, limit, alpha)
                else:
                    elementwise.swiglu(self, g, u, h, n_used * F)
                hq, hds = vecdot.activation_buffers(self, n_used, F)
                vecdot.quantize(self, h, hq, hds, n_used, F, terms)
        vecdot.remember_quantized(self, h, n_used, F, hq, hds, terms)
        y = self._out((n_used, D))
        vecdot.mmvq(self, down.format, down.raw, down.row_bytes, hq, hds, y, D, F, 1, terms, bias=biases[2],
                    bias_per_expert=True, slots=n_used, expert_ids=experts, expert_bytes=D * down.row_bytes,
                    x_per_slot=True)
        out = self._out((1, D))
        moe_kernels.combine(self, y, weights, out, n_used, D)
        return out.reshape(x.shape)

    def swiglu(self, gate: Array, up: Array, *, limit: float | None = None, alpha: float | None = None) -> Array:
        g, u = self._act(gate), self._act(up)
        if g.shape != u.shape:
            raise ValueError(f"gate {g.shape} and up {u.shape} differ")
        y = self._out(g.shape)
        rows, F = self._rows(g)
        q8 = vecdot.fused_output_buffers(self, rows, F)       # decode: the down product's int8 input too
        if q8:
            elementwise.swiglu_q8(self, g, u, y, *q8, g.size, not (limit is None and alpha is None), limit, alpha)
            vecdot.remember_quantized(self, y, rows, F, *q8)
        elif limit is None and alpha is None:
            elementwise.swiglu(self, g, u, y, g.size)
        else:
            elementwise.swiglu_clamped(self, g, u, y, g.size, limit, alpha)
        return y

    def gelu(self, x: Array) -> Array:
        x = self._act(x)
        y = self._out(x.shape)
        elementwise.gelu_tanh(self, x, y, x.size)
        return y

    def argmax(self, x: Array) -> np.ndarray:
        x = self._act(x)
        rows, N = self._rows(x)
        if N == 0:
            raise ValueError("argmax of an empty axis")
        out = self.cp.empty((rows,), dtype=np.int64)
        argmax_kernels.argmax(self, x, out, rows, N)
        host = self.cp.asnumpy(out).reshape(x.shape[:-1])
        return np.asarray(host)
