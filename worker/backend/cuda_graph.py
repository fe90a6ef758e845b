"""The single-token decode step as a CUDA graph: captured once per KV cache, then replayed.

A decode step launches a few hundred small kernels; launched one by one from Python each costs
microseconds of host time, more than the kernel itself on a small model. Captured into a graph
(CUDA stream capture through CuPy), a step is one H2D copy of [token, position] and one graph
launch. The graph is static: the kernels read the token and the position from a device buffer
(`inputs`), so the same graph serves every step on its cache.

How the backend's ops take part (worker/backend/cuda.py): while a step is captured they ask
`device_ids`, `device_positions` and `device_start` for the device-side token and position
instead of sending host values, and `hold` keeps the tables they read alive for the graph's life.
Outside a capture those calls answer None / NULL and the ops run eagerly as usual.

Memory: every buffer the captured step allocates comes from the graph's own CuPy MemoryPool
(plain cudaMalloc), so nothing else can reuse it between replays; the pool's bytes are counted as
workspace (`CudaBackend.memory_report`) and freed with the KV cache the graph serves. A capture
that fails (an op that needs the host, out of memory, over the memory cap) leaves the step to
the eager path: one retry after an eager step (which sizes the RoPE tables and compiles the
kernels), then eager for the rest of that cache.

The logits a replay returns live in the graph's buffer: valid until the next step on that cache.
"""
from __future__ import annotations

import itertools
import weakref

import numpy as np

from worker.backend.cuda_runtime import NULL
from worker.errors import InvalidParamsError, PromptTooLongError

MAX_GRAPHS = 2               # live decode graphs per backend (one per KV cache in use)
CAPTURE_ATTEMPTS = 2         # per cache: a first try, and one after an eager step


class DecodeGraph:
    """One captured single-token forward pass of one model over one KV cache."""

    def __init__(self, cp, forward, cache):
        self.cp = cp
        self.forward = forward
        self._cache = weakref.ref(cache)
        self.pool = cp.cuda.MemoryPool()          # plain cudaMalloc, private to this graph
        self.graph = None
        self.inputs = None                        # device int32 [token, position]
        self.logits = None
        self.held: list = []
        self.token_rows: int | None = None        # rows of the token table: the ids a replay may take
        self.attempts = 0
        self.failure: str | None = None
        self.replays = 0

    @property
    def nbytes(self) -> int:
        return int(self.pool.total_bytes())

    def serves(self, cache) -> bool:
        return self._cache() is cache

    def matches(self, forward, cache) -> bool:
        return self._cache() is cache and self.forward == forward

    @property
    def stale(self) -> bool:
        return self._cache() is None

    def release(self) -> None:
        self.graph, self.inputs, self.logits, self.held = None, None, None, []
        self.pool.free_all_blocks()

    def replay(self, token: int, start_pos: int):
        host = np.array([token, start_pos], dtype=np.int32)
        stream = self.cp.cuda.get_current_stream()
        # pageable source: the copy is staged before this call returns, so `host` may go at once
        self.inputs.data.copy_from_host_async(host.ctypes.data, host.nbytes, stream)
        self.graph.launch(stream)
        self.replays += 1
        return self.logits


class DecodeGraphs:
    """The backend's decode graphs, and the capture state its ops consult."""

    def __init__(self, backend, enabled: bool = True):
        self.backend = backend
        self.enabled = enabled
        self.positions_needed = 0                 # RoPE tables must cover this many positions
        self._capturing: DecodeGraph | None = None
        self._capture_token = 0
        self._capture_pos = 0
        self._names = itertools.count()
        self.stats = {"captures": 0, "replays": 0, "eager_steps": 0, "failures": []}

    # -- what the ops ask while a step is captured ----------------------------------------------
    def device_ids(self, ids_host: np.ndarray, n_rows: int):
        """The device int32 ids for an embedding lookup of the captured step (None outside a capture)."""
        g = self._capturing
        if g is None:
            return None
        if ids_host.size == 1 and int(ids_host[0]) == self._capture_token:
            g.token_rows = n_rows if g.token_rows is None else min(g.token_rows, n_rows)
            return g.inputs[0:1]
        if ids_host.size == 1 and int(ids_host[0]) == self._capture_pos:
            return g.inputs[1:2]                  # a learned position table (GPT-2)
        raise RuntimeError(f"decode capture: ids {ids_host.tolist()} are neither the step's token nor its position")

    def device_positions(self, positions: np.ndarray):
        """The device int32 positions for RoPE in the captured step (None outside a capture)."""
        g = self._capturing
        if g is None:
            return None
        if positions.size != 1 or int(positions[0]) != self._capture_pos:
            raise RuntimeError(f"decode capture: positions {positions.tolist()} are not the step's")
        return g.inputs[1:2]

    def device_start(self, start_pos: int):
        """The device int32 first position for the KV store and attention (NULL outside a capture)."""
        g = self._capturing
        if g is None:
            return NULL
        if start_pos != self._capture_pos:
            raise RuntimeError(f"decode capture: start_pos {start_pos} is not the step's")
        return g.inputs[1:2]

    def hold(self, *arrays) -> None:
        """Keep arrays the captured kernels read (e.g. RoPE tables) alive as long as the graph."""
        if self._capturing is not None:
            self._capturing.held.extend(arrays)

    # -- the step ----------------------------------------------------------------------------
    def step(self, forward, ids: np.ndarray, cache, start_pos: int):
        """forward(ids, cache, start_pos) for one token: replayed from this cache's graph when there is one."""
        if not 0 <= start_pos < cache.n_ctx:
            raise PromptTooLongError(
                f"positions {start_pos}..{start_pos} do not fit a KV cache of {cache.n_ctx} positions", field="n_ctx")
        graph = self._graph_for(forward, cache)
        if graph.graph is None and graph.attempts < CAPTURE_ATTEMPTS and graph.failure is None:
            self._capture(graph, cache, start_pos)
        if graph.graph is None:
            return self._eager(forward, ids, cache, start_pos)
        token = int(ids[0])
        if not 0 <= token < graph.token_rows:
            raise InvalidParamsError(f"token id {token} outside the table's rows [0, {graph.token_rows})", field="ids")
        self.stats["replays"] += 1
        return graph.replay(token, start_pos)

    def _eager(self, forward, ids, cache, start_pos: int):
        self.stats["eager_steps"] += 1
        self.positions_needed = cache.n_ctx       # size the RoPE tables for the next capture
        try:
            return forward(ids, cache, start_pos)
        finally:
            self.positions_needed = 0

    def _graph_for(self, forward, cache) -> DecodeGraph:
        workspace = self.backend._workspace
        graphs = {name: g for name, g in workspace.items() if name.startswith("decode_graph")}
        for name, g in graphs.items():
            if g.matches(forward, cache):
                return g
        for name, g in graphs.items():             # another model on this cache, or a cache that is gone
            if g.serves(cache) or g.stale:
                workspace.pop(name).release()
        live = [n for n in workspace if n.startswith("decode_graph")]
        for name in live[:max(0, len(live) - MAX_GRAPHS + 1)]:
            workspace.pop(name).release()
        g = DecodeGraph(self.backend.cp, forward, cache)
        workspace[f"decode_graph:{next(self._names)}"] = g
        return g

    def _capture(self, g: DecodeGraph, cache, start_pos: int) -> None:
        b, cp = self.backend, self.backend.cp
        g.attempts += 1
        self._capture_pos = start_pos
        self._capture_token = 0 if start_pos != 0 else 1    # never equal to the position: see device_ids
        stream = cp.cuda.Stream(non_blocking=True)
        error = None
        with cp.cuda.using_allocator(g.pool.malloc):
            try:
                g.inputs = cp.zeros(2, dtype=np.int32)
                self._capturing = g
                self.positions_needed = cache.n_ctx
                with stream:
                    stream.begin_capture()
                    try:
                        g.logits = g.forward(np.array([self._capture_token], dtype=np.int64), cache, start_pos)
                    except Exception as exc:  # noqa: BLE001 — the capture must still be ended
                        error = exc
                    try:
                        graph = stream.end_capture()
                    except Exception as exc:  # noqa: BLE001 — invalidated by an op that needs the host
                        error = error or exc
            except Exception as exc:  # noqa: BLE001 — e.g. out of memory for the graph's buffers
                error = error or exc
            finally:
                self._capturing = None
                self.positions_needed = 0
        if error is None and g.token_rows is None:
            error = RuntimeError("decode capture: the step read no token ids from the device buffer")
        if error is None and b.memory_limit_bytes is not None and b._in_use() > b.memory_limit_bytes:
            error = MemoryError(f"decode graph buffers ({g.nbytes} bytes) exceed the memory cap")
        if error is not None:
            g.release()
            message = f"{type(error).__name__}: {error}"
            self.stats["failures"].append(message)
            if g.attempts >= CAPTURE_ATTEMPTS:
                g.failure = message
            return
        g.graph = graph
        self.stats["captures"] += 1
