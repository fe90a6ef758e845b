"""CUDA backend: the Backend interface on one NVIDIA GPU through CuPy RawModules.

Memory: every buffer is plain device memory from one CuPy MemoryPool over cudaMalloc (never
managed memory, never a host fallback). Weights keep their stored GGUF format in device memory;
kernels dequantize on the fly (worker/backend/kernels/*.cu). The bytes in use are accounted as
weights, kv_cache and workspace (memory_report); an optional `memory_limit_bytes` caps the
three together, so out-of-memory handling can be tested by shrinking the cap.

Products: T <= 4 tokens (decode) use the fused dequantize + matrix-vector kernel; longer inputs
(prefill) dequantize the weight tile by tile into a bounded float32 workspace and multiply with
cuBLAS (cupy.matmul). The KV cache is float16 by default (kv_dtype="float32" for exactness).
"""
from __future__ import annotations

import math
import os
import re
import threading
import time
import weakref
from pathlib import Path

import numpy as np

from worker.backend.base import Array, Backend, KVCache
from worker.config import RopeConfig
from worker.errors import DeviceOOMError, InvalidParamsError, PromptTooLongError, WorkerError
from worker.quant import FORMATS as QUANT_FORMATS

KERNEL_DIR = Path(__file__).with_name("kernels")
MATVEC_MAX_T = 4                      # must match matmul.cu
ATT_MAX_HEAD_DIM = 256                # must match attention.cu
TILE_MAX_BYTES = 64 << 20             # prefill dequantization workspace bound
CUDA_MEMORY_TYPE_DEVICE = 2           # cudaMemoryTypeDevice (3 would be managed memory)

# GGML type name -> kernel suffix
_KERNEL_FORMAT = {q.name: f.kernel for q, f in QUANT_FORMATS.items()}   # from the format registry


class CudaUnavailableError(WorkerError):
    """CuPy, the driver or the requested device is missing (codes CUDA_UNAVAILABLE, CUDA_DEVICE_NOT_FOUND)."""

    code = "CUDA_UNAVAILABLE"


# -- kernels -----------------------------------------------------------------------------------

def kernel_source(name: str) -> str:
    """A .cu file with its local #include "x.cuh" lines replaced by the header text (once each).

    NVRTC then needs no include path, and CuPy's compile cache sees header edits.
    """
    seen: set[str] = set()

    def expand(text: str) -> str:
        def include(m):
            header = m.group(1)
            if header in seen:
                return ""
            seen.add(header)
            return expand((KERNEL_DIR / header).read_text())
        return re.sub(r'^\s*#include\s+"([^"]+)"\s*$', include, text, flags=re.M).replace("#pragma once", "")

    return expand((KERNEL_DIR / name).read_text())


_MODULES: dict[tuple[int, str], object] = {}
_MODULES_LOCK = threading.Lock()


def _module(device_index: int, name: str):
    import cupy as cp

    key = (device_index, name)
    with _MODULES_LOCK:
        if key not in _MODULES:
            _MODULES[key] = cp.RawModule(code=kernel_source(name), options=("-std=c++17",))
        return _MODULES[key]


# -- memory ------------------------------------------------------------------------------------

_POOL = None
_ALLOCATOR = None


def device_pool():
    """The process's CuPy memory pool over plain cudaMalloc, installed as CuPy's allocator."""
    global _POOL, _ALLOCATOR
    import cupy as cp

    if _POOL is None:
        _POOL = cp.cuda.MemoryPool()             # default: cudaMalloc (not malloc_managed)
        _ALLOCATOR = _POOL.malloc
        if os.environ.get("M0_CUDA_DIRECT_MALLOC"):
            # one cudaMalloc per buffer, no pooling: exact bounds for compute-sanitizer memcheck
            _ALLOCATOR = _direct_malloc
        cp.cuda.set_allocator(_ALLOCATOR)
    return _POOL


def _direct_malloc(size: int):
    import cupy as cp

    return cp.cuda.memory.MemoryPointer(cp.cuda.memory.Memory(size), 0)


def allocator_is_device_pool() -> bool:
    """True while CuPy still allocates through our plain-device-memory pool."""
    import cupy as cp

    current = cp.cuda.get_allocator()
    return current is _ALLOCATOR or current == _ALLOCATOR


class CudaWeight:
    """A tensor's stored bytes in device memory, plus what the kernels need to read them."""

    def __init__(self, name: str, qtype, shape: tuple, raw, block_size: int, type_size: int):
        self.name = name
        self.qtype = qtype
        self.shape = tuple(int(s) for s in shape)
        self.raw = raw                                  # cupy uint8, the stored bytes
        self.format = _KERNEL_FORMAT[qtype.name]
        k = self.shape[-1] if self.shape else 1
        self.row_bytes = k // block_size * type_size
        self.nbytes = int(raw.nbytes)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"CudaWeight({self.name!r}, {self.qtype.name}, {self.shape})"


def _i32(v) -> np.int32:
    return np.int32(v)


def _i64(v) -> np.int64:
    return np.int64(v)


def _f32(v) -> np.float32:
    return np.float32(v)


NULL = np.uint64(0)


def require_cuda_device(device_index: int):
    """CuPy, a working driver and GPU `device_index`, or CudaUnavailableError naming what is missing
    (CUDA_UNAVAILABLE; CUDA_DEVICE_NOT_FOUND for an index beyond the GPUs there). Returns cupy."""
    try:
        import cupy as cp
    except ImportError as exc:
        raise CudaUnavailableError(f"CuPy is not installed: {exc}") from exc
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 — driver missing or broken
        raise CudaUnavailableError(f"no usable CUDA driver: {exc}") from exc
    if count < 1:       # docs/errors.md: no GPU at all is CUDA_UNAVAILABLE, not a missing index
        raise CudaUnavailableError("the CUDA driver reports no GPU (0 visible)")
    if not 0 <= device_index < count:
        raise CudaUnavailableError(f"CUDA device {device_index} does not exist ({count} visible)",
                                   code="CUDA_DEVICE_NOT_FOUND")
    return cp


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, device_index: int = 0, memory_limit_bytes: int | None = None, *,
                 kv_dtype: str = "float16", staging_bytes: int = 16 << 20,
                 poison_outputs: bool = False, sync_each_op: bool = False):
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
        self._staging_bytes = staging_bytes
        self._stager = None
        self._weights: weakref.WeakSet = weakref.WeakSet()   # live weights (a dropped model frees its own)
        self._kv_bytes = 0
        self._workspace: dict[str, object] = {}     # persistent scratch: name -> cupy array
        self._functions: dict[tuple[str, str], object] = {}
        self._rope_tables: dict[RopeConfig, tuple[int, object, object]] = {}
        self.last_residency: dict | None = None
        self.residency_violations_at_load: list = []
        self.upload_stats = {"bytes": 0, "seconds": 0.0}

    # -- memory --------------------------------------------------------------------------------
    def _in_use(self) -> int:
        return self._weights_bytes() + self._kv_bytes + self._workspace_bytes()

    def _weights_bytes(self) -> int:
        return sum(w.nbytes for w in self._weights)

    def _workspace_bytes(self) -> int:
        ws = sum(int(a.nbytes) for a in self._workspace.values())
        return ws + sum(int(c.nbytes) + int(s.nbytes) for _, c, s in self._rope_tables.values())

    def device_free_bytes(self) -> int:
        free, _total = self.cp.cuda.runtime.memGetInfo()
        return int(free) + int(self.pool.free_bytes())

    def available_bytes(self) -> int:
        """What a new allocation may take: device free memory, and what the cap leaves."""
        free = self.device_free_bytes()
        if self.memory_limit_bytes is not None:
            free = min(free, self.memory_limit_bytes - self._in_use())
        return max(0, free)

    def _oom(self, what: str, required: int, available: int) -> DeviceOOMError:
        cap = f" (memory cap {self.memory_limit_bytes} bytes)" if self.memory_limit_bytes is not None else ""
        return DeviceOOMError(
            f"{what} needs {required} bytes of device memory but only {available} are available on "
            f"{self.device_name} (cuda:{self.device_index}){cap}",
            required_bytes=int(required), available_bytes=int(available), device=f"cuda:{self.device_index}")

    def _allocate(self, what: str, shape, dtype, zero: bool = False):
        """Plain device memory, refused with DeviceOOMError before allocating when it cannot fit."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        available = self.available_bytes()
        if nbytes > available:
            raise self._oom(what, nbytes, available)
        try:
            return (self.cp.zeros if zero else self.cp.empty)(shape, dtype=dtype)
        except self.cp.cuda.memory.OutOfMemoryError as exc:
            self.pool.free_all_blocks()
            raise self._oom(what, nbytes, self.available_bytes()) from exc

    def load_weight(self, tensor) -> CudaWeight:
        from worker.quant import FORMATS, tensor_nbytes
        from worker.backend.upload import PinnedStager

        qtype = tensor.qtype
        if qtype not in FORMATS or qtype.name not in _KERNEL_FORMAT:
            raise InvalidParamsError(f"{tensor.name}: no CUDA kernels for {getattr(qtype, 'name', qtype)}", field="qtype")
        fmt = FORMATS[qtype]
        shape = tuple(int(s) for s in tensor.shape)
        if shape and shape[-1] % fmt.block_size:
            raise InvalidParamsError(f"{tensor.name}: row of {shape[-1]} is not whole {qtype.name} blocks", field="shape")
        raw = np.asarray(tensor.raw).reshape(-1).view(np.uint8)
        if raw.size != tensor_nbytes(qtype, shape):
            raise InvalidParamsError(f"{tensor.name}: {raw.size} bytes stored, {qtype.name} {shape} needs "
                                     f"{tensor_nbytes(qtype, shape)}", field="raw")
        dst = self._allocate(f"weight {tensor.name}", (max(1, raw.size),), np.uint8)
        if self._stager is None:
            self._stager = PinnedStager(self._staging_bytes)
        started = time.perf_counter()
        if raw.size:
            self._stager.upload(raw, dst)
        self.upload_stats["bytes"] += int(raw.size)
        self.upload_stats["seconds"] += time.perf_counter() - started
        weight = CudaWeight(tensor.name, qtype, shape, dst, fmt.block_size, fmt.type_size)
        problem = self._residency_problem(weight)
        if problem:
            self.residency_violations_at_load.append(problem)
        self._weights.add(weight)
        return weight

    def release_cached_memory(self) -> None:
        """Give the pool's unused blocks back to the device (after a model or cache was dropped)."""
        self.pool.free_all_blocks()

    def _residency_problem(self, w: CudaWeight) -> dict | None:
        attrs = self.cp.cuda.runtime.pointerGetAttributes(w.raw.data.ptr)
        host_ptr = int(attrs.hostPointer or 0)
        if attrs.type != CUDA_MEMORY_TYPE_DEVICE or host_ptr != 0 or attrs.device != self.device_index:
            return {"tensor": w.name, "type": int(attrs.type), "host_pointer": host_ptr, "device": int(attrs.device)}
        return None

    def verify_residency(self) -> dict:
        """Pointer attributes of every weight buffer: device memory on our GPU, no host mapping."""
        weights = list(self._weights)
        violations = [p for p in (self._residency_problem(w) for w in weights) if p]
        violations += self.residency_violations_at_load
        if not allocator_is_device_pool():
            violations.append({"allocator": "CuPy's allocator is no longer the plain device pool"})
        result = {"ok": not violations, "checked": len(weights), "violations": violations,
                  "bytes": self._weights_bytes(), "device": f"cuda:{self.device_index}",
                  "checked_at": time.time()}
        self.last_residency = result
        return result

    check_residency = verify_residency          # the name worker/cli/serve.py looks for

    def asarray(self, host: np.ndarray) -> Array:
        return self.cp.asarray(np.asarray(host, dtype=np.float32))

    def to_host(self, x: Array) -> np.ndarray:
        if isinstance(x, np.ndarray):
            return np.array(x, dtype=np.float32, copy=True)
        return self.cp.asnumpy(x).astype(np.float32, copy=False)

    def new_kv_cache(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        if n_ctx < 1:
            raise InvalidParamsError(f"KV cache needs at least one position, got n_ctx={n_ctx}", field="n_ctx")
        shape = (n_ctx, n_kv_heads, head_dim)
        per = int(np.prod(shape)) * self.kv_dtype.itemsize
        required = 2 * n_layers * per
        available = self.available_bytes()
        if required > available:                     # refuse before allocating anything
            raise self._oom(f"KV cache ({n_layers} layers x {n_ctx} positions)", required, available)
        k, v = [], []
        try:
            for _ in range(n_layers):
                k.append(self._allocate("KV cache", shape, self.kv_dtype, zero=True))
                v.append(self._allocate("KV cache", shape, self.kv_dtype, zero=True))
        except DeviceOOMError:
            k.clear()
            v.clear()
            self.pool.free_all_blocks()
            raise
        self._kv_bytes += required
        return KVCache(n_layers, n_ctx, n_kv_heads, head_dim, k, v, required)

    def free_kv_cache(self, cache: KVCache) -> None:
        if cache.k or cache.v:
            self._kv_bytes -= cache.nbytes
        super().free_kv_cache(cache)
        self.pool.free_all_blocks()                  # back to the device: memory returns to baseline

    def memory_report(self) -> dict:
        free, total = self.cp.cuda.runtime.memGetInfo()
        return {"weights": self._weights_bytes(), "kv_cache": self._kv_bytes,
                "workspace": self._workspace_bytes(),
                "pool_used": int(self.pool.used_bytes()), "pool_cached": int(self.pool.free_bytes()),
                "device_total": int(total), "device_free": int(free),
                "limit": self.memory_limit_bytes, "device": f"cuda:{self.device_index}",
                "device_name": self.device_name}

    def _scratch(self, name: str, n_floats: int):
        """A persistent float32 workspace buffer of at least n_floats (grown, never shrunk)."""
        buf = self._workspace.get(name)
        if buf is None or buf.size < n_floats:
            self._workspace.pop(name, None)
            buf = self._allocate(f"workspace {name}", (n_floats,), np.float32)
            self._workspace[name] = buf
        return buf[:n_floats]

    def synchronize(self) -> None:
        self.cp.cuda.Device(self.device_index).synchronize()

    # -- helpers -------------------------------------------------------------------------------
    def _fn(self, module: str, name: str):
        fn = self._functions.get((module, name))
        if fn is None:                  # looked up once: a decode step launches hundreds of kernels
            fn = self._functions[(module, name)] = _module(self.device_index, module).get_function(name)
        return fn

    def _launch(self, module: str, name: str, grid, block, args) -> None:
        self._fn(module, name)((int(grid),), (int(block),), args)
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
        per_row = K // 8 + K % 8
        total = n_rows * per_row
        if total:
            self._launch("matmul.cu", f"dequant_rows_{w.format}", (total + 255) // 256, 256,
                         (w.raw if raw is None else raw, _i64(w.row_bytes), NULL, _i64(first_row), out,
                          _i32(n_rows), _i32(K)))
        return out

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
        per_row = D // 8 + D % 8
        if T:
            dev_ids = self.cp.asarray(ids_host.astype(np.int32))
            self._launch("matmul.cu", f"dequant_rows_{table.format}", (T * per_row + 255) // 256, 256,
                         (table.raw, _i64(table.row_bytes), dev_ids, _i64(0), out, _i32(T), _i32(D)))
        return out

    def matmul(self, x: Array, w, bias=None, expert: int | None = None) -> Array:
        cp = self.cp
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
                raise InvalidParamsError(f"{w.name}: expert={expert} needs a 3-D [E, N, K] weight, got {w.shape}", field="expert")
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
        if T <= MATVEC_MAX_T:
            rows_per_block = 4
            self._launch("matmul.cu", f"matvec_{w.format}", (N + rows_per_block - 1) // rows_per_block,
                         32 * rows_per_block, (raw, _i64(w.row_bytes), x2, b if b is not None else NULL, y,
                                               _i32(N), _i32(K), _i32(T)))
        else:
            rows = max(1, min(N, TILE_MAX_BYTES // (4 * K)))
            tile = self._scratch("dequant_tile", rows * K)
            for n0 in range(0, N, rows):
                n = min(rows, N - n0)
                t = tile[: n * K].reshape(n, K)
                self._dequantize(w, n0, n, out=t, raw=raw)
                if n == N:
                    cp.matmul(x2, t.T, out=y)
                else:
                    y[:, n0:n0 + n] = x2 @ t.T
            if b is not None:
                self._launch("matmul.cu", "add_bias", (T * N + 255) // 256, 256, (y, b, _i32(T), _i32(N)))
        return y.reshape(N) if squeeze else y.reshape(x.shape[:-1] + (N,))

    def _elementwise_grid(self, n: int) -> int:
        return max(1, min((n + 255) // 256, 65536))

    def add(self, a: Array, b: Array) -> Array:
        a, b = self._act(a), self._act(b)
        if a.shape != b.shape:
            a, b = (self.cp.ascontiguousarray(t) for t in self.cp.broadcast_arrays(a, b))
        y = self._out(a.shape)
        self._launch("elementwise.cu", "add", self._elementwise_grid(a.size), 256, (a, b, y, _i64(a.size)))
        return y

    def mul(self, a: Array, b: Array) -> Array:
        a, b = self._act(a), self._act(b)
        if a.shape == b.shape:
            y = self._out(a.shape)
            self._launch("elementwise.cu", "mul", self._elementwise_grid(a.size), 256, (a, b, y, _i64(a.size)))
            return y
        shape = np.broadcast_shapes(a.shape, b.shape)
        if a.shape != shape:
            a, b = b, a                                   # a is the full-shape operand
        if a.shape == shape and a.ndim >= 1 and b.size == a.shape[-1] and b.shape[-1:] == a.shape[-1:] \
                and all(s == 1 for s in b.shape[:-1]):
            y = self._out(shape)
            self._launch("elementwise.cu", "mul_cols", self._elementwise_grid(a.size), 256,
                         (a, b, y, _i64(a.size), _i32(a.shape[-1])))
            return y
        if a.shape == shape and a.ndim >= 2 and b.shape[-1] == 1 and b.size * a.shape[-1] == a.size \
                and b.shape[:-1] == a.shape[:-1]:
            y = self._out(shape)
            self._launch("elementwise.cu", "mul_rows", self._elementwise_grid(a.size), 256,
                         (a, b, y, _i64(a.size), _i32(a.shape[-1])))
            return y
        a, b = (self.cp.ascontiguousarray(t) for t in self.cp.broadcast_arrays(a, b))
        y = self._out(a.shape)
        self._launch("elementwise.cu", "mul", self._elementwise_grid(a.size), 256, (a, b, y, _i64(a.size)))
        return y

    def _rows(self, x):
        D = x.shape[-1]
        return (x.size // D if D else 0), D

    def rmsnorm(self, x: Array, weight, eps: float) -> Array:
        x = self._act(x)
        rows, D = self._rows(x)
        w = self._vector(weight, "norm weight")
        y = self._out(x.shape)
        if rows:
            self._launch("norm.cu", "rmsnorm", rows, 256 if D >= 256 else 32 * max(1, min(8, (D + 31) // 32)),
                         (x, w, y, _i32(D), _f32(eps)))
        return y

    def layernorm(self, x: Array, weight, bias, eps: float) -> Array:
        x = self._act(x)
        rows, D = self._rows(x)
        w, b = self._vector(weight, "norm weight"), self._vector(bias, "norm bias")
        y = self._out(x.shape)
        if rows:
            self._launch("norm.cu", "layernorm", rows, 256 if D >= 256 else 32 * max(1, min(8, (D + 31) // 32)),
                         (x, w, b, y, _i32(D), _f32(eps)))
        return y

    def _rope_table(self, rope: RopeConfig, n_positions: int):
        from worker.rope import rope_cos_sin

        entry = self._rope_tables.get(rope)
        if entry is None or entry[0] < n_positions:
            n = max(n_positions, 2 * entry[0] if entry else 0, 1024)
            cos, sin = rope_cos_sin(np.arange(n), rope)
            self._rope_tables.pop(rope, None)
            entry = (n, self.cp.asarray(np.ascontiguousarray(cos)), self.cp.asarray(np.ascontiguousarray(sin)))
            self._rope_tables[rope] = entry
        return entry

    def rope(self, x: Array, positions: np.ndarray, rope: RopeConfig) -> Array:
        if rope.style not in ("normal", "neox"):
            raise ValueError(f"unknown rope style {rope.style!r}: expected normal or neox")
        x = self._act(x)
        T, H, hd = x.shape
        if rope.dim % 2 or rope.dim > hd:
            raise ValueError(f"rope dim {rope.dim} must be even and at most head_dim {hd}")
        pos = np.asarray(self.cp.asnumpy(positions) if isinstance(positions, self.cp.ndarray) else positions).reshape(-1)
        if pos.size != T:
            raise ValueError(f"{pos.size} positions for {T} tokens")
        if T and pos.min() < 0:
            raise InvalidParamsError("negative rope position", field="positions")
        y = self._out(x.shape)
        if T == 0:
            return y
        _, cos, sin = self._rope_table(rope, int(pos.max()) + 1)
        base = int(pos[0])
        contiguous = np.array_equal(pos, np.arange(base, base + T))
        dev_pos = NULL if contiguous else self.cp.asarray(pos.astype(np.int32))
        slots = rope.dim // 2 + (hd - rope.dim)
        total = T * H * slots
        self._launch("rope.cu", "rope", (total + 255) // 256, 256,
                     (x, y, cos, sin, dev_pos, _i32(base if contiguous else 0), _i32(T), _i32(H), _i32(hd),
                      _i32(rope.dim), _i32(1 if rope.style == "neox" else 0)))
        return y

    def attention(self, q: Array, k: Array, v: Array, cache: KVCache, layer: int, start_pos: int, *,
                  sliding_window: int = 0, sinks=None, scale: float | None = None) -> Array:
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
        n_new = T * KVH * hd
        offset = start_pos * KVH * hd
        grid = self._elementwise_grid(n_new)
        self._launch("attention.cu", f"kv_store_{kvt}", grid, 256, (k, cache.k[layer], _i64(offset), _i64(n_new)))
        self._launch("attention.cu", f"kv_store_{kvt}", grid, 256, (v, cache.v[layer], _i64(offset), _i64(n_new)))
        sink = self._vector(sinks, "sinks") if sinks is not None else None
        if sink is not None and sink.size != H:
            raise ValueError(f"{sink.size} sinks for {H} heads")
        scale = 1.0 / math.sqrt(hd) if scale is None else scale
        out = self._out((T, H * hd))
        warps = 8 if T == 1 else 4
        self._launch("attention.cu", f"attention_{kvt}", T * H, 32 * warps,
                     (q, cache.k[layer], cache.v[layer], sink if sink is not None else NULL, out,
                      _i32(T), _i32(H), _i32(KVH), _i32(hd), _i32(start_pos), _i32(max(0, sliding_window)),
                      _f32(scale)))
        return out

    def swiglu(self, gate: Array, up: Array, *, limit: float | None = None, alpha: float | None = None) -> Array:
        g, u = self._act(gate), self._act(up)
        if g.shape != u.shape:
            raise ValueError(f"gate {g.shape} and up {u.shape} differ")
        y = self._out(g.shape)
        if limit is None and alpha is None:
            self._launch("elementwise.cu", "swiglu", self._elementwise_grid(g.size), 256, (g, u, y, _i64(g.size)))
        else:
            self._launch("elementwise.cu", "swiglu_clamped", self._elementwise_grid(g.size), 256,
                         (g, u, y, _i64(g.size), _i32(limit is not None), _f32(limit or 0.0),
                          _f32(1.0 if alpha is None else alpha)))
        return y

    def gelu(self, x: Array) -> Array:
        x = self._act(x)
        y = self._out(x.shape)
        self._launch("elementwise.cu", "gelu_tanh", self._elementwise_grid(x.size), 256, (x, y, _i64(x.size)))
        return y

    def softmax(self, x: Array, temperature: float = 1.0) -> Array:
        if not temperature > 0:
            raise InvalidParamsError(f"softmax temperature must be > 0, got {temperature}", field="temperature")
        x = self._act(x)
        rows, N = self._rows(x)
        y = self._out(x.shape)
        if rows and N:
            self._launch("softmax.cu", "softmax", rows, 256, (x, y, _i32(N), _f32(1.0 / temperature)))
        return y

    def argmax(self, x: Array) -> np.ndarray:
        x = self._act(x)
        rows, N = self._rows(x)
        if N == 0:
            raise ValueError("argmax of an empty axis")
        out = self.cp.empty((rows,), dtype=np.int64)
        if rows:
            self._launch("softmax.cu", "argmax", rows, 256, (x, out, _i32(N)))
        host = self.cp.asnumpy(out).reshape(x.shape[:-1])
        return np.asarray(host)
