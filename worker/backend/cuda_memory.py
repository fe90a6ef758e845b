"""Device memory of the CUDA backend: weights in their stored format, KV caches, workspace, residency.

Every buffer is plain device memory from one CuPy MemoryPool over cudaMalloc (never managed
memory, never a host fallback). The bytes in use are accounted as weights, kv_cache and workspace
(`memory_report`); an optional `memory_limit_bytes` caps the three together, so out-of-memory
handling can be tested by shrinking the cap. Every allocation is checked before it is made and a
refusal is DeviceOOMError (VRAM_OOM) with the numbers.

`CudaMemory` is the memory half of CudaBackend (a mixin: it uses the backend's `cp`, `pool`,
`device_index`, `device_name`, `memory_limit_bytes`, `kv_dtype` and the fields set up by
`_init_memory`).
"""
from __future__ import annotations

import time
import weakref

import numpy as np

from worker.backend.base import KVCache
from worker.backend.cuda_runtime import allocator_is_device_pool, process_allocations
from worker.errors import DeviceOOMError, InvalidParamsError
from worker.quant import FORMATS as QUANT_FORMATS

CUDA_MEMORY_TYPE_DEVICE = 2           # cudaMemoryTypeDevice (3 would be managed memory)
WEIGHT_TAIL_PAD = 16                  # bytes allocated past each weight (kernels/vecdot.cuh: load16_any)

# GGML type name -> kernel suffix (dq8_<suffix>, matvec_<suffix>, ...), from the format registry
_KERNEL_FORMAT = {q.name: f.kernel for q, f in QUANT_FORMATS.items()}


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


def _allocation(array) -> tuple[int, int] | None:
    """(address, bytes) of the device allocation an array lives in (a view: its base's), None if not a device array."""
    mem = getattr(getattr(array, "data", None), "mem", None)
    return (int(mem.ptr), int(mem.size)) if hasattr(mem, "ptr") and hasattr(mem, "size") else None


def replaced_but_held_bytes(entries) -> int:
    """Bytes of the buffers the captured graphs among `entries` hold (cuda_graph.DecodeGraphs.hold) that are no
    longer entries themselves: a scratch buffer or RoPE table that grew after a capture stays allocated as long as
    the graph that reads it, so it is still workspace. Each allocation counts once, views by their base."""
    counted = {_allocation(a) for a in entries} - {None}
    held = {_allocation(a) for g in entries for a in getattr(g, "held", ())} - {None}
    return sum(size for _, size in held - counted)


class CudaMemory:
    """Allocation, accounting and residency checks (the memory half of CudaBackend)."""

    def _init_memory(self, staging_bytes: int) -> None:
        self._staging_bytes = staging_bytes
        self._stager = None
        self._weights: weakref.WeakSet = weakref.WeakSet()   # live weights (a dropped model frees its own)
        self._kv_bytes = 0
        # persistent scratch: name -> anything with .nbytes (cupy arrays; captured decode graphs)
        self._workspace: dict[str, object] = {}
        self._rope_tables: dict = {}                 # RopeConfig -> (n_positions, cos, sin)
        self.last_residency: dict | None = None
        self.residency_violations_at_load: list = []
        self.upload_stats = {"bytes": 0, "seconds": 0.0}

    # -- accounting ----------------------------------------------------------------------------
    def _in_use(self) -> int:
        return self._weights_bytes() + self._kv_bytes + self._workspace_bytes()

    def _weights_bytes(self) -> int:
        return sum(w.nbytes for w in self._weights)

    def _workspace_bytes(self) -> int:
        entries = [*self._workspace.values(), *(t for _, c, s in self._rope_tables.values() for t in (c, s))]
        return sum(int(a.nbytes) for a in entries) + replaced_but_held_bytes(entries)

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

    def _persistent(self, what: str, shape, dtype):
        """Device memory that outlives any graph being captured: from the process pool, never a graph's own."""
        with process_allocations():
            return self._allocate(what, shape, dtype)

    def _scratch(self, name: str, n_floats: int):
        """A persistent float32 workspace buffer of at least n_floats (grown, never shrunk)."""
        buf = self._workspace.get(name)
        if buf is None or buf.size < n_floats:
            self._workspace.pop(name, None)
            with process_allocations():              # persistent: never from a captured graph's pool
                buf = self._allocate(f"workspace {name}", (n_floats,), np.float32)
            self._workspace[name] = buf
        self.graphs.hold(buf)                        # a captured graph keeps it even if it grows later
        return buf[:n_floats]

    def memory_report(self) -> dict:
        free, total = self.cp.cuda.runtime.memGetInfo()
        return {"weights": self._weights_bytes(), "kv_cache": self._kv_bytes,
                "workspace": self._workspace_bytes(),
                "pool_used": int(self.pool.used_bytes()), "pool_cached": int(self.pool.free_bytes()),
                "device_total": int(total), "device_free": int(free),
                "limit": self.memory_limit_bytes, "device": f"cuda:{self.device_index}",
                "device_name": self.device_name}

    def release_cached_memory(self) -> None:
        """Give the pool's unused blocks back to the device (after a model or cache was dropped), and the
        forward graphs of a dropped model with them."""
        self.graphs.prune()
        self.graphs.free_released_pools()
        self.pool.free_all_blocks()

    # -- weights -------------------------------------------------------------------------------
    def load_weight(self, tensor) -> CudaWeight:
        from worker.backend.upload import PinnedStager
        from worker.quant import tensor_nbytes

        qtype = tensor.qtype
        if qtype not in QUANT_FORMATS or qtype.name not in _KERNEL_FORMAT:
            raise InvalidParamsError(f"{tensor.name}: no CUDA kernels for {getattr(qtype, 'name', qtype)}",
                                     field="qtype")
        fmt = QUANT_FORMATS[qtype]
        shape = tuple(int(s) for s in tensor.shape)
        if shape and shape[-1] % fmt.block_size:
            raise InvalidParamsError(f"{tensor.name}: row of {shape[-1]} is not whole {qtype.name} blocks",
                                     field="shape")
        raw = np.asarray(tensor.raw).reshape(-1).view(np.uint8)
        if raw.size != tensor_nbytes(qtype, shape):
            raise InvalidParamsError(f"{tensor.name}: {raw.size} bytes stored, {qtype.name} {shape} needs "
                                     f"{tensor_nbytes(qtype, shape)}", field="raw")
        # WEIGHT_TAIL_PAD bytes past the data: vecdot.cuh's unaligned 16-byte loads read up to 4 bytes
        # beyond a row's last block. They are not the tensor's: CudaWeight.raw and its accounting exclude them.
        padded = self._allocate(f"weight {tensor.name}", (max(1, raw.size) + WEIGHT_TAIL_PAD,), np.uint8)
        dst = padded[:max(1, raw.size)]
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

    # -- KV cache ------------------------------------------------------------------------------
    def new_kv_cache(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        if n_ctx < 1:
            raise InvalidParamsError(f"KV cache needs at least one position, got n_ctx={n_ctx}", field="n_ctx")
        shape = (n_ctx, n_kv_heads, head_dim)
        per = int(np.prod(shape)) * self.kv_dtype.itemsize
        required = 2 * n_layers * per
        available = self.available_bytes()
        if required > available and self.graphs.graphs():
            # the kept forward graphs (cuda_graph.py) are an optimisation: a request's cache comes first
            self.graphs.release_all()
            self.pool.free_all_blocks()
            available = self.available_bytes()
        if required > available:                     # refuse before allocating anything
            raise self._oom(f"KV cache ({n_layers} layers x {n_ctx} positions)", required, available)
        # one allocation, zeroed by one launch, and a view a layer: a served job makes a cache before its
        # first token, and 2 x layers allocations (each with its memory query and memset) cost milliseconds
        try:
            block = self._allocate("KV cache", (2, n_layers) + shape, self.kv_dtype, zero=True)
        except DeviceOOMError:
            self.pool.free_all_blocks()
            raise
        k, v = list(block[0]), list(block[1])
        self._kv_bytes += required
        return KVCache(n_layers, n_ctx, n_kv_heads, head_dim, k, v, required)

    def free_kv_cache(self, cache: KVCache) -> None:
        # the forward graphs stay (they serve the next cache of this shape); the KV address table forgets
        # this cache, and graphs whose model is gone go
        self.graphs.forget(cache)
        self.graphs.prune()
        if cache.k or cache.v:
            self._kv_bytes -= cache.nbytes
        cache.k.clear()
        cache.v.clear()
        self.pool.free_all_blocks()                  # back to the device: memory returns to baseline
