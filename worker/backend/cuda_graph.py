"""Forward passes as CUDA graphs: captured once per model forward, token count and KV shape, then replayed.

A decode step launches a few hundred small kernels; launched one by one from Python each costs
microseconds of host time, more than the kernel itself on a small model. Captured into a graph
(CUDA stream capture through CuPy), a step is one H2D copy of its inputs and one graph launch. The
graph is static: the kernels read the tokens, their positions and the first position from a
device buffer (`inputs`: T ids, T positions, start), so the same graph serves every step of that
token count.

Graphs do not belong to a KV cache. Attention reads the cache's per-layer addresses from the
backend's device table (`kv_table`: K of layer l at 2l, V at 2l + 1) rather than from addresses
baked into the graph, so a graph serves every cache of its geometry (layers, KV heads, head size,
element type) up to the capacity it was captured for: the decode grid (attention.decode_splits) and
the RoPE tables were sized for that capacity, and the kernels bound their keys by the position,
never by the capacity. Before a replay on a cache whose addresses the table does not hold, one
small H2D copy on the stream writes them (the table remembers which cache it holds, and forgets it
when that cache is freed). A cache larger than the graph's capacity recaptures it at the larger one.
So a served job, whose KV cache is new, replays the decode graph of earlier jobs and the prefill
graph of a prompt length the backend has seen before.

Which passes are captured: the single-token step at once (decoding repeats it for every token);
a pass of T > 1 tokens (a prefill chunk) the second time the backend sees that T (on any cache),
since a capture costs about one op-by-op pass: a long prompt's equal 512-token chunks, or a
prompt length that recurs, then replay with no host work per op, while a one-off prompt costs
nothing more than before.

How the backend's ops take part (worker/backend/cuda.py): while a step is captured they ask
`device_ids`, `device_positions`, `device_start` and `kv_table` for the device-side token, position
and cache addresses instead of host values, and `hold` keeps the tables they read alive for the
graph's life. Outside a capture those calls answer None / NULL and the ops run eagerly as usual.

Memory: every buffer the captured step allocates comes from the graph's own CuPy MemoryPool
(plain cudaMalloc), so nothing else can reuse it between replays; the pool's bytes, and the
table's, are counted as workspace (`CudaBackend.memory_report`). Buffers that outlive the graph
(scratch, RoPE tables, the table) come from the process pool even while it captures. Graphs are kept across caches,
at most MAX_GRAPHS single-token and MAX_PREFILL_GRAPHS multi-token ones, the least recently used
released first; a KV cache that does not fit otherwise releases them all (cuda_memory.py). A
capture that fails (an op that needs the host, out of memory, over the memory cap) leaves the step
to the eager path: one retry after an eager step (which sizes the RoPE tables and compiles the
kernels), then eager for that shape for good; a failure for want of memory is tried again on the
next cache.

The logits a replay returns live in the graph's buffer: valid until that graph's next replay.
"""
from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict

import numpy as np

from worker.backend.cuda_runtime import NULL
from worker.errors import DeviceOOMError, InvalidParamsError, PromptTooLongError

MAX_GRAPHS = 4               # kept single-token graphs per backend (one per model forward and KV geometry)
MAX_PREFILL_GRAPHS = 4       # kept multi-token graphs per backend (their buffers hold T rows of activations)
MAX_SHAPES = 256             # shapes whose sightings and capture attempts are remembered
CAPTURE_ATTEMPTS = 2         # per shape: a first try, and one after an eager step
KV_TABLE = "kv_table"        # the workspace name of the device table of cache addresses
GRAPH_PREFIX = "decode_graph"


def kv_geometry(cache) -> tuple:
    """What a graph's kernels assume of a cache besides its capacity: layers, KV heads, head size, element type."""
    dtype = str(cache.k[0].dtype) if cache.k else None
    return (cache.n_layers, cache.n_kv_heads, cache.head_dim, dtype)


def kv_addresses(cache) -> np.ndarray:
    """The table's contents for `cache`: K and V device addresses of every layer, in that order."""
    return np.array([int(a.data.ptr) for pair in zip(cache.k, cache.v) for a in pair], dtype=np.uint64)


def _forward_key(forward):
    """A hashable name for a forward: a bound method by its instance and function (equal bound methods
    are distinct objects each time they are looked up)."""
    owner = getattr(forward, "__self__", None)
    return (id(owner), forward.__func__) if owner is not None and hasattr(forward, "__func__") else id(forward)


def _weak(forward):
    """A weak reference to a forward: a kept graph must not keep its model (and its weights) alive."""
    try:
        if getattr(forward, "__self__", None) is not None and hasattr(forward, "__func__"):
            return weakref.WeakMethod(forward)
        return weakref.ref(forward)
    except TypeError:                             # not weakly referable: held as long as the graph
        return lambda: forward


def _is_memory_failure(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, DeviceOOMError))


class DecodeGraph:
    """One model forward of `n_tokens` tokens over caches of one geometry: its capture state and, once
    captured, the graph (valid for caches of up to `capacity` positions)."""

    def __init__(self, cp, forward, n_tokens: int, geometry: tuple):
        self.cp = cp
        self._forward = _weak(forward)
        self.n_tokens = n_tokens
        self.geometry = geometry
        self.capacity = 0                         # positions of the cache it was captured on
        self.name: str | None = None              # its workspace entry while it holds a pool
        self.pool = cp.cuda.MemoryPool()          # plain cudaMalloc, private to this graph
        self.graph = None
        self.inputs = None                        # device int32 [ids (T), positions (T), start]
        self.logits = None
        self.held: list = []
        self.table = None                         # the KV table the captured attention reads (None: none read)
        self.token_rows: int | None = None        # rows of the token table: the ids a replay may take
        self.attempts = 0
        self.sightings = 0                        # passes of this shape the backend has seen
        self.failure: str | None = None
        self.memory_failure = False               # the last failed capture wanted memory: retried on a new cache
        self._attempts_on = None                  # the cache the attempts were made on (weak)
        self.replays = 0

    @property
    def forward(self):
        return self._forward()

    @property
    def stale(self) -> bool:
        """Its model is gone: nothing can replay it any more."""
        return self._forward() is None

    @property
    def nbytes(self) -> int:
        return int(self.pool.total_bytes())

    def serves(self, cache) -> bool:
        """Whether a replay may run over `cache` (same geometry, within the captured capacity)."""
        return self.graph is not None and kv_geometry(cache) == self.geometry and cache.n_ctx <= self.capacity

    def fits(self, cache) -> bool:
        """serves(cache) for a cache known to have this graph's geometry."""
        return self.graph is not None and cache.n_ctx <= self.capacity

    def release(self) -> None:
        self.graph, self.inputs, self.logits, self.held, self.table = None, None, None, [], None
        self.capacity, self.token_rows = 0, None
        self.pool.free_all_blocks()

    def replay(self, ids: np.ndarray, start_pos: int, stream):
        T = self.n_tokens
        host = np.empty(2 * T + 1, dtype=np.int32)
        host[:T] = ids
        host[T:2 * T] = np.arange(start_pos, start_pos + T)
        host[2 * T] = start_pos
        # pageable source: the copy is staged before this call returns, so `host` may go at once
        self.inputs.data.copy_from_host_async(host.ctypes.data, host.nbytes, stream)
        self.graph.launch(stream)
        self.replays += 1
        return self.logits


class DecodeGraphs:
    """The backend's forward graphs, the KV address table, and the capture state its ops consult."""

    def __init__(self, backend, enabled: bool = True):
        self.backend = backend
        self.enabled = enabled
        self.positions_needed = 0                 # RoPE tables must cover this many positions
        self._capturing: DecodeGraph | None = None
        self._capture_ids = np.zeros(1, dtype=np.int64)
        self._capture_positions = np.zeros(1, dtype=np.int64)
        self._names = itertools.count()
        self._shapes: OrderedDict = OrderedDict()  # (forward, T, geometry) -> DecodeGraph, least recent first
        self._table_holds = None                  # weak reference to the cache whose addresses the table holds
        self._table_host = None                   # the last addresses sent (kept until the next copy)
        self.stats = {"captures": 0, "replays": 0, "eager_steps": 0, "failures": [],
                      "prefill_captures": 0, "prefill_replays": 0, "prefill_eager": 0, "table_writes": 0}

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

    def kv_table(self, cache):
        """(table, capacity) for attention over `cache`: in a capture the backend's device table of cache
        addresses and the capacity the graph is captured for; outside one (NULL, cache.n_ctx)."""
        g = self._capturing
        if g is None:
            return NULL, cache.n_ctx
        g.table = self._table(cache.n_layers)
        return g.table, g.capacity

    def hold(self, *arrays) -> None:
        """Keep arrays the captured kernels read (e.g. RoPE tables) alive as long as the graph."""
        if self._capturing is not None:
            self._capturing.held.extend(arrays)

    # -- the KV address table ----------------------------------------------------------------------
    def _table(self, n_layers: int):
        """The backend's table, made (or grown: the graphs that read the old one are released once the
        capture has ended, `_release_old_table_graphs`) for n_layers."""
        workspace = self.backend._workspace
        table = workspace.get(KV_TABLE)
        if table is None or table.size < 2 * n_layers:
            workspace.pop(KV_TABLE, None)
            table = self.backend._persistent("workspace KV address table", (2 * n_layers,), np.uint64)
            workspace[KV_TABLE] = table
            self._table_holds = None
        return table

    def _release_old_table_graphs(self) -> None:
        table = self.backend._workspace.get(KV_TABLE)
        for g in self.graphs():
            if g.table is not None and g.table is not table:
                self._release(g)

    def _point_table_at(self, cache, stream) -> None:
        """Write `cache`'s addresses into the table, unless it holds them already (one async copy)."""
        if self._table_holds is not None and self._table_holds() is cache:
            return
        self._table_host = kv_addresses(cache)
        table = self.backend._workspace[KV_TABLE]
        table.data.copy_from_host_async(self._table_host.ctypes.data, self._table_host.nbytes, stream)
        self._table_holds = weakref.ref(cache)
        self.stats["table_writes"] += 1

    def forget(self, cache) -> None:
        """`cache` is being freed: the table no longer holds a live cache's addresses."""
        held = self._table_holds() if self._table_holds is not None else None
        if held is None or held is cache:         # by identity: a KVCache compares by value
            self._table_holds = None

    # -- kept graphs -----------------------------------------------------------------------------
    def graphs(self) -> list[DecodeGraph]:
        """The graphs that hold a pool (captured, or being captured), least recently used first."""
        return [g for n, g in self.backend._workspace.items() if n.startswith(GRAPH_PREFIX)]

    def _release(self, g: DecodeGraph) -> None:
        if g.name is not None:
            self.backend._workspace.pop(g.name, None)
            g.name = None
        g.release()

    def release_all(self) -> None:
        """Release every kept graph (their pools go back to the device pool); the shapes' counts stay."""
        for g in self.graphs():
            self._release(g)

    def free_released_pools(self) -> None:
        """Give the cached blocks of released graphs' pools back to the device. A buffer of a capture that was
        still referenced when its graph was released (a failed capture's exception frames, a caller's logits)
        goes back to that pool, not the device, when it is freed later; a captured graph's free blocks stay,
        since its kernels still use them at every replay."""
        for g in self._shapes.values():
            if g.graph is None and g.name is None:
                g.pool.free_all_blocks()

    def prune(self) -> None:
        """Release the graphs whose model is gone."""
        for g in self.graphs():
            if g.stale:
                self._release(g)
        for key in [k for k, g in self._shapes.items() if g.stale]:
            del self._shapes[key]

    def _make_room(self, single: bool, keeping: DecodeGraph) -> None:
        """Release the least recently used graphs of one kind until a new one fits the bound."""
        self.prune()
        keep = MAX_GRAPHS if single else MAX_PREFILL_GRAPHS
        live = [g for g in self.graphs() if (g.n_tokens == 1) == single and g is not keeping]
        for g in live[:max(0, len(live) - keep + 1)]:
            self._release(g)

    # -- the step ----------------------------------------------------------------------------
    def step(self, forward, ids: np.ndarray, cache, start_pos: int):
        """forward(ids, cache, start_pos): replayed from the graph of this forward, len(ids) and the
        cache's geometry when there is one that serves the cache."""
        T = len(ids)
        if start_pos < 0 or start_pos + T > cache.n_ctx:
            raise PromptTooLongError(
                f"positions {start_pos}..{start_pos + T - 1} do not fit a KV cache of {cache.n_ctx} positions",
                field="n_ctx")
        g = self._shape_for(forward, cache, T)      # its geometry is the cache's: fits() checks the capacity
        g.sightings += 1
        if g._attempts_on is None or g._attempts_on() is not cache:
            g._attempts_on = weakref.ref(cache)
            if g.memory_failure:                  # memory may have come free since: try again on this cache
                g.attempts, g.failure, g.memory_failure = 0, None, False
        worth_capturing = T == 1 or g.sightings > 1
        if not g.fits(cache) and worth_capturing and g.attempts < CAPTURE_ATTEMPTS and g.failure is None:
            self._capture(g, cache, start_pos)
        if not g.fits(cache):
            return self._eager(forward, ids, cache, start_pos)
        ids = np.asarray(ids)
        if ids.min() < 0 or ids.max() >= g.token_rows:
            bad = int(ids[(ids < 0) | (ids >= g.token_rows)][0])
            raise InvalidParamsError(f"token id {bad} outside the table's rows [0, {g.token_rows})", field="ids")
        workspace = self.backend._workspace
        workspace[g.name] = workspace.pop(g.name)  # most recently used last
        stream = self.backend.cp.cuda.get_current_stream()
        if g.table is not None:
            self._point_table_at(cache, stream)
        self.stats["replays" if T == 1 else "prefill_replays"] += 1
        return g.replay(ids, start_pos, stream)

    def _eager(self, forward, ids, cache, start_pos: int):
        self.stats["eager_steps" if len(ids) == 1 else "prefill_eager"] += 1
        self.positions_needed = cache.n_ctx       # size the RoPE tables for the next capture
        try:
            return forward(ids, cache, start_pos)
        finally:
            self.positions_needed = 0

    def _shape_for(self, forward, cache, n_tokens: int) -> DecodeGraph:
        key = (_forward_key(forward), n_tokens, kv_geometry(cache))
        g = self._shapes.get(key)
        if g is not None and g.forward != forward:   # its model is gone (and another took its id)
            self._release(g)
            del self._shapes[key]
            g = None
        if g is None:
            g = DecodeGraph(self.backend.cp, forward, n_tokens, key[2])
            self._shapes[key] = g
            while len(self._shapes) > MAX_SHAPES:
                self._release(self._shapes.popitem(last=False)[1])
        self._shapes.move_to_end(key)
        return g

    def _capture(self, g: DecodeGraph, cache, start_pos: int) -> None:
        b, cp = self.backend, self.backend.cp
        T = g.n_tokens
        self._release(g)                          # one that served smaller caches: recaptured for this one
        self._make_room(T == 1, g)
        g.attempts += 1
        g.capacity = cache.n_ctx
        g.name = f"{GRAPH_PREFIX}:{next(self._names)}"
        b._workspace[g.name] = g                  # its pool counts (memory cap) while it is captured
        # Ids that are not the positions (see device_ids): 0 or 1 where one token, all 0 otherwise.
        self._capture_positions = np.arange(start_pos, start_pos + T, dtype=np.int64)
        self._capture_ids = np.full(T, 0 if (T > 1 or start_pos != 0) else 1, dtype=np.int64)
        stream = cp.cuda.Stream(non_blocking=True)
        error = None
        graph = None
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
        self._release_old_table_graphs()         # after the capture: freeing memory may synchronize
        if error is None and g.token_rows is None:
            error = RuntimeError("decode capture: the step read no token ids from the device buffer")
        if error is None and b.memory_limit_bytes is not None and b._in_use() > b.memory_limit_bytes:
            error = MemoryError(f"decode graph buffers ({g.nbytes} bytes) exceed the memory cap")
        if error is not None:
            self._release(g)
            message = f"{type(error).__name__}: {error}"
            self.stats["failures"].append(message)
            g.memory_failure = _is_memory_failure(error)
            if g.attempts >= CAPTURE_ATTEMPTS:
                g.failure = message
            return
        g.graph = graph
        g.attempts = 0                            # attempts count failures: a larger cache may recapture it
        self.stats["captures" if T == 1 else "prefill_captures"] += 1
