"""Forward passes as CUDA graphs: captured once per KV cache and token count, then replayed.

A decode step launches a few hundred small kernels; launched one by one from Python each costs
microseconds of host time, more than the kernel itself on a small model. Captured into a graph
(CUDA stream capture through CuPy), a step is one H2D copy of its inputs and one graph launch. The
graph is static: the kernels read the tokens, their positions and the first position from a
device buffer (`inputs`: T ids, T positions, start), so the same graph serves every step of that
token count on its cache.

Which passes are captured: the single-token step at once (decoding repeats it for every token);
a pass of T > 1 tokens (a prefill chunk) the second time that T comes on the same cache, since a
capture costs about one op-by-op pass: a long prompt's equal 512-token chunks, or a prompt
length that recurs on a cache, then replay with no host work per op, while a one-off prompt
costs nothing more than before.

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

MAX_GRAPHS = 2               # live single-token graphs per backend (one per KV cache in use)
MAX_PREFILL_GRAPHS = 4       # live multi-token graphs per backend (their buffers hold T rows of activations)
CAPTURE_ATTEMPTS = 2         # per cache: a first try, and one after an eager step


class DecodeGraph:
    """One captured forward pass of `n_tokens` tokens of one model over one KV cache."""

    def __init__(self, cp, forward, cache, n_tokens: int = 1):
        self.cp = cp
        self.forward = forward
        self.n_tokens = n_tokens
        self._cache = weakref.ref(cache)
        self.pool = cp.cuda.MemoryPool()          # plain cudaMalloc, private to this graph
        self.graph = None
        self.inputs = None                        # device int32 [ids (T), positions (T), start]
        self.logits = None
        self.held: list = []
        self.token_rows: int | None = None        # rows of the token table: the ids a replay may take
        self.attempts = 0
        self.sightings = 0                        # passes of this shape seen on the cache
        self.failure: str | None = None
        self.replays = 0

    @property
    def nbytes(self) -> int:
        return int(self.pool.total_bytes())

    def serves(self, cache) -> bool:
        return self._cache() is cache

    def matches(self, forward, cache, n_tokens: int = 1) -> bool:
        return self._cache() is cache and self.forward == forward and self.n_tokens == n_tokens

    @property
    def stale(self) -> bool:
        return self._cache() is None

    def release(self) -> None:
        self.graph, self.inputs, self.logits, self.held = None, None, None, []
        self.pool.free_all_blocks()

    def replay(self, ids: np.ndarray, start_pos: int):
        T = self.n_tokens
        host = np.empty(2 * T + 1, dtype=np.int32)
        host[:T] = ids
        host[T:2 * T] = np.arange(start_pos, start_pos + T)
        host[2 * T] = start_pos
        stream = self.cp.cuda.get_current_stream()
        # pageable source: the copy is staged before this call returns, so `host` may go at once
        self.inputs.data.copy_from_host_async(host.ctypes.data, host.nbytes, stream)
        self.graph.launch(stream)
        self.replays += 1
        return self.logits


def _model_of(forward):
    """The model a forward belongs to (a bound method's instance): its graphs may share a cache."""
    return getattr(forward, "__self__", forward)


class DecodeGraphs:
    """The backend's forward graphs, and the capture state its ops consult."""

    def __init__(self, backend, enabled: bool = True):
        self.backend = backend
        self.enabled = enabled
        self.positions_needed = 0                 # RoPE tables must cover this many positions
        self._capturing: DecodeGraph | None = None
        self._capture_ids = np.zeros(1, dtype=np.int64)
        self._capture_positions = np.zeros(1, dtype=np.int64)
        self._names = itertools.count()
        self.stats = {"captures": 0, "replays": 0, "eager_steps": 0, "failures": [],
                      "prefill_captures": 0, "prefill_replays": 0, "prefill_eager": 0}

    # -- what the ops ask while a step is captured ----------------------------------------------
    def device_ids(self, ids_host: np.ndarray, n_rows: int):
        """The device int32 ids for an embedding lookup of the captured step (None outside a capture)."""
        g = self._capturing
        if g is None:
            return None
        T = g.n_tokens
        if np.array_equal(ids_host, self._capture_ids):
            g.token_rows = n_rows if g.token_rows is None else min(g.token_rows, n_rows)
            return g.inputs[0:T]
        if np.array_equal(ids_host, self._capture_positions):
            return g.inputs[T:2 * T]              # a learned position table (GPT-2)
        raise RuntimeError(f"decode capture: ids {ids_host.tolist()[:8]} are neither the step's tokens nor positions")

    def device_positions(self, positions: np.ndarray):
        """The device int32 positions for RoPE in the captured step (None outside a capture)."""
        g = self._capturing
        if g is None:
            return None
        if not np.array_equal(np.asarray(positions).reshape(-1), self._capture_positions):
            raise RuntimeError(f"decode capture: positions {np.asarray(positions).tolist()[:8]} are not the step's")
        return g.inputs[g.n_tokens:2 * g.n_tokens]

    def device_start(self, start_pos: int):
        """The device int32 first position for the KV store and attention (NULL outside a capture)."""
        g = self._capturing
        if g is None:
            return NULL
        if start_pos != int(self._capture_positions[0]):
            raise RuntimeError(f"decode capture: start_pos {start_pos} is not the step's")
        return g.inputs[2 * g.n_tokens:2 * g.n_tokens + 1]

    def hold(self, *arrays) -> None:
        """Keep arrays the captured kernels read (e.g. RoPE tables) alive as long as the graph."""
        if self._capturing is not None:
            self._capturing.held.extend(arrays)

    # -- the step ----------------------------------------------------------------------------
    def step(self, forward, ids: np.ndarray, cache, start_pos: int):
        """forward(ids, cache, start_pos): replayed from this cache's graph for len(ids) tokens when there is one."""
        T = len(ids)
        if start_pos < 0 or start_pos + T > cache.n_ctx:
            raise PromptTooLongError(
                f"positions {start_pos}..{start_pos + T - 1} do not fit a KV cache of {cache.n_ctx} positions",
                field="n_ctx")
        graph = self._graph_for(forward, cache, T)
        graph.sightings += 1
        worth_capturing = T == 1 or graph.sightings > 1
        if graph.graph is None and worth_capturing and graph.attempts < CAPTURE_ATTEMPTS and graph.failure is None:
            self._capture(graph, cache, start_pos)
        if graph.graph is None:
            return self._eager(forward, ids, cache, start_pos)
        ids = np.asarray(ids)
        if ids.min() < 0 or ids.max() >= graph.token_rows:
            bad = int(ids[(ids < 0) | (ids >= graph.token_rows)][0])
            raise InvalidParamsError(f"token id {bad} outside the table's rows [0, {graph.token_rows})", field="ids")
        self.stats["replays" if T == 1 else "prefill_replays"] += 1
        return graph.replay(ids, start_pos)

    def _eager(self, forward, ids, cache, start_pos: int):
        self.stats["eager_steps" if len(ids) == 1 else "prefill_eager"] += 1
        self.positions_needed = cache.n_ctx       # size the RoPE tables for the next capture
        try:
            return forward(ids, cache, start_pos)
        finally:
            self.positions_needed = 0

    def _graph_for(self, forward, cache, n_tokens: int) -> DecodeGraph:
        workspace = self.backend._workspace
        graphs = {name: g for name, g in workspace.items() if name.startswith("decode_graph")}
        for name, g in graphs.items():
            if g.matches(forward, cache, n_tokens):
                return g
        for name, g in graphs.items():             # another model on this cache, or a cache that is gone
            if (g.serves(cache) and _model_of(g.forward) is not _model_of(forward)) or g.stale:
                workspace.pop(name).release()
        single = n_tokens == 1
        keep = MAX_GRAPHS if single else MAX_PREFILL_GRAPHS
        live = [n for n, g in workspace.items() if n.startswith("decode_graph") and (g.n_tokens == 1) == single]
        for name in live[:max(0, len(live) - keep + 1)]:
            workspace.pop(name).release()
        g = DecodeGraph(self.backend.cp, forward, cache, n_tokens)
        workspace[f"decode_graph:{next(self._names)}"] = g
        return g

    def _capture(self, g: DecodeGraph, cache, start_pos: int) -> None:
        b, cp = self.backend, self.backend.cp
        T = g.n_tokens
        g.attempts += 1
        # Ids that are not the positions (see device_ids): 0 or 1 where one token, all 0 otherwise.
        self._capture_positions = np.arange(start_pos, start_pos + T, dtype=np.int64)
        self._capture_ids = np.full(T, 0 if (T > 1 or start_pos != 0) else 1, dtype=np.int64)
        stream = cp.cuda.Stream(non_blocking=True)
        error = None
        with cp.cuda.using_allocator(g.pool.malloc):
            try:
                g.inputs = cp.zeros(2 * T + 1, dtype=np.int32)
                self._capturing = g
                self.positions_needed = cache.n_ctx
                with stream:
                    stream.begin_capture()
                    try:
                        g.logits = g.forward(self._capture_ids.copy(), cache, start_pos)
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
        self.stats["captures" if T == 1 else "prefill_captures"] += 1
