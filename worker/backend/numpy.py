"""NumPy reference backend: the executable specification of worker/backend/base.py.

Plain and obviously correct, not fast. Activations are float32 arrays; reductions (norms,
softmax, attention scores) are computed in float64 and rounded once, so that the reference is
at least as accurate as anything it is compared with.

Weights: `load_weight` keeps the QuantTensor and dequantizes on first use (then caches the
float32 copy) — except stacked expert tensors [E, N, K], which are dequantized one expert at a
time, so that a mixture-of-experts model does not need all experts in float32 at once.
"""
from __future__ import annotations

import math

import numpy as np

from worker.backend.base import Array, Backend, KVCache
from worker.config import RopeConfig
from worker.errors import InvalidParamsError, PromptTooLongError
from worker.rope import rope_cos_sin


class NumpyWeight:
    """A stored tensor plus its lazily dequantized float32 copy (per expert for 3-D tensors)."""

    def __init__(self, tensor, cache_experts: int = 8):
        self.tensor = tensor
        self.name = getattr(tensor, "name", "")
        self.shape = tuple(tensor.shape)
        self._dense: np.ndarray | None = None
        self._experts: dict[int, np.ndarray] = {}
        self._cache_experts = cache_experts

    @property
    def nbytes(self) -> int:
        return int(self.tensor.raw.nbytes)

    @property
    def float32_bytes(self) -> int:
        """Bytes held by the dequantized float32 copies (the whole tensor, or cached experts)."""
        copies = [self._dense] if self._dense is not None else list(self._experts.values())
        # An F32 tensor's "copy" may be a view of the stored bytes: that is no extra memory.
        return sum(int(c.nbytes) for c in copies if not np.may_share_memory(c, self.tensor.raw))

    def dense(self) -> np.ndarray:
        if self._dense is None:
            self._dense = _dequantize(self.tensor)
        return self._dense

    def expert(self, e: int) -> np.ndarray:
        """w[e] of a stacked [E, N, K] tensor, dequantized alone (rows are whole quant blocks)."""
        if self._dense is not None:
            return self._dense[e]
        if e not in self._experts:
            n_experts = self.shape[0]
            if not 0 <= e < n_experts:
                raise InvalidParamsError(f"expert {e} outside [0, {n_experts}) for {self.name}", field="expert")
            raw = np.asarray(self.tensor.raw).reshape(n_experts, -1)[e]
            self._experts[e] = _dequantize(type(self.tensor)(self.name, self.tensor.qtype, self.shape[1:], raw))
            while len(self._experts) > self._cache_experts:
                self._experts.pop(next(iter(self._experts)))
        return self._experts[e]


def _dequantize(tensor) -> np.ndarray:
    from worker.quant import dequantize

    return np.ascontiguousarray(dequantize(tensor), dtype=np.float32).reshape(tuple(tensor.shape))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) written with tanh, which cannot overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _dense(w) -> np.ndarray:
    """Float32 view of a weight: a NumpyWeight, or a plain array (tests may pass arrays)."""
    if isinstance(w, NumpyWeight):
        return w.dense()
    return np.asarray(w, dtype=np.float32)


class NumpyBackend(Backend):
    name = "numpy"
    device_name = "cpu-reference"

    def __init__(self):
        self._weights: list[NumpyWeight] = []
        self._kv_bytes = 0

    # -- memory ----------------------------------------------------------------------------
    def load_weight(self, tensor) -> NumpyWeight:
        weight = NumpyWeight(tensor)
        self._weights.append(weight)
        return weight

    def asarray(self, host: np.ndarray) -> Array:
        return np.asarray(host, dtype=np.float32)

    def to_host(self, x: Array) -> np.ndarray:
        return np.array(x, dtype=np.float32, copy=True)

    def new_kv_cache(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        if n_ctx < 1:
            raise InvalidParamsError(f"KV cache needs at least one position, got n_ctx={n_ctx}", field="n_ctx")
        shape = (n_ctx, n_kv_heads, head_dim)
        k = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        v = [np.zeros(shape, np.float32) for _ in range(n_layers)]
        nbytes = sum(a.nbytes for a in k) + sum(a.nbytes for a in v)
        self._kv_bytes += nbytes
        return KVCache(n_layers, n_ctx, n_kv_heads, head_dim, k, v, nbytes)

    def free_kv_cache(self, cache: KVCache) -> None:
        if cache.k or cache.v:
            self._kv_bytes -= cache.nbytes
        super().free_kv_cache(cache)

    def memory_report(self) -> dict:
        # The stored tensors and their float32 copies both occupy host memory (--max-memory on cpu).
        weights = sum(w.nbytes + w.float32_bytes for w in self._weights)
        return {"weights": weights, "kv_cache": self._kv_bytes, "workspace": 0}

    # -- ops ---------------------------------------------------------------------------------
    def embedding(self, table, ids: np.ndarray) -> Array:
        ids = np.asarray(ids)
        n_rows = table.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= n_rows):
            bad = int(ids[(ids < 0) | (ids >= n_rows)][0])
            raise InvalidParamsError(f"token id {bad} outside the table's rows [0, {n_rows})", field="ids")
        return _dense(table)[ids.astype(np.int64)].astype(np.float32)

    def matmul(self, x: Array, w, bias=None, expert: int | None = None) -> Array:
        if expert is None:
            weight = _dense(w)
        else:
            weight = w.expert(expert) if isinstance(w, NumpyWeight) else _dense(w)[expert]
        y = np.asarray(x, np.float32) @ weight.T
        if bias is not None:
            b = _dense(bias)
            y = y + (b if expert is None or b.ndim == 1 else b[expert])
        return y.astype(np.float32)

    def add(self, a: Array, b: Array) -> Array:
        return (np.asarray(a, np.float32) + np.asarray(b, np.float32)).astype(np.float32)

    def mul(self, a: Array, b: Array) -> Array:
        return (np.asarray(a, np.float32) * np.asarray(b, np.float32)).astype(np.float32)

    def rmsnorm(self, x: Array, weight, eps: float) -> Array:
        x64 = np.asarray(x, np.float64)
        normed = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
        return (normed * _dense(weight)).astype(np.float32)

    def layernorm(self, x: Array, weight, bias, eps: float) -> Array:
        x64 = np.asarray(x, np.float64)
        centred = x64 - x64.mean(axis=-1, keepdims=True)
        normed = centred / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps)
        return (normed * _dense(weight) + _dense(bias)).astype(np.float32)

    def rope(self, x: Array, positions: np.ndarray, rope: RopeConfig) -> Array:
        x = np.asarray(x, np.float32)
        cos, sin = rope_cos_sin(np.asarray(positions), rope)     # [T, dim/2]
        cos, sin = cos[:, None, :], sin[:, None, :]               # broadcast over heads
        rotated, passthrough = x[..., : rope.dim], x[..., rope.dim :]
        if rope.style == "normal":   # pairs (2i, 2i+1)
            first, second = rotated[..., 0::2], rotated[..., 1::2]
        elif rope.style == "neox":   # pairs (i, i + dim/2)
            first, second = rotated[..., : rope.dim // 2], rotated[..., rope.dim // 2 :]
        else:
            raise ValueError(f"unknown rope style {rope.style!r}: expected normal or neox")
        new_first = first * cos - second * sin
        new_second = first * sin + second * cos
        out = np.empty_like(x)
        if rope.style == "normal":
            out[..., 0 : rope.dim : 2], out[..., 1 : rope.dim : 2] = new_first, new_second
        else:
            out[..., : rope.dim // 2], out[..., rope.dim // 2 : rope.dim] = new_first, new_second
        out[..., rope.dim :] = passthrough
        return out

    def attention(
        self,
        q: Array,
        k: Array,
        v: Array,
        cache: KVCache,
        layer: int,
        start_pos: int,
        *,
        sliding_window: int = 0,
        sinks=None,
        scale: float | None = None,
        rope: RopeConfig | None = None,
    ) -> Array:
        q, k, v = (np.asarray(a, np.float32) for a in (q, k, v))
        n_new, n_heads, head_dim = q.shape
        if rope is not None:                 # the meaning of rope=: rotate, then attend
            positions = np.arange(start_pos, start_pos + n_new)
            q, k = self.rope(q, positions, rope), self.rope(k, positions, rope)
        n_kv_heads = k.shape[1]
        end = start_pos + n_new
        if start_pos < 0 or end > cache.n_ctx:
            raise PromptTooLongError(
                f"positions {start_pos}..{end - 1} do not fit a KV cache of {cache.n_ctx} positions",
                field="n_ctx",
            )
        if n_heads % n_kv_heads:
            raise ValueError(f"{n_heads} query heads cannot share {n_kv_heads} KV heads evenly")

        # 1. store the new keys and values
        cache.k[layer][start_pos:end] = k
        cache.v[layer][start_pos:end] = v
        keys = cache.k[layer][:end].astype(np.float64)       # [L, KV, hd]
        values = cache.v[layer][:end].astype(np.float64)

        # 2. each query head reads kv head h // group (GQA; group 1 = MHA)
        group = n_heads // n_kv_heads
        keys = np.repeat(keys, group, axis=1)                 # [L, H, hd]
        values = np.repeat(values, group, axis=1)

        # 3. scores [H, T, L] with the causal (and sliding-window) mask
        scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
        scores = np.einsum("thd,lhd->htl", q.astype(np.float64), keys) * scale
        query_pos = np.arange(start_pos, end)[:, None]
        key_pos = np.arange(end)[None, :]
        visible = key_pos <= query_pos
        if sliding_window > 0:
            visible &= key_pos > query_pos - sliding_window
        scores = np.where(visible[None], scores, -np.inf)

        # 4. softmax over keys; a sink adds exp(sink[h]) to the denominator only
        row_max = scores.max(axis=-1, keepdims=True)
        if sinks is not None:
            sink = _dense(sinks).astype(np.float64)[:, None, None]     # [H, 1, 1]
            row_max = np.maximum(row_max, sink)
        weights = np.exp(scores - row_max)
        denominator = weights.sum(axis=-1, keepdims=True)
        if sinks is not None:
            denominator = denominator + np.exp(sink - row_max)
        weights = weights / denominator

        out = np.einsum("htl,lhd->thd", weights, values)       # [T, H, hd]
        return out.reshape(n_new, n_heads * head_dim).astype(np.float32)

    def swiglu(self, gate: Array, up: Array, *, limit: float | None = None, alpha: float | None = None) -> Array:
        """silu(gate) * up; with limit and/or alpha the GPT-OSS form (alpha defaults to 1, the
        clamps apply only with a limit)."""
        g = np.asarray(gate, np.float64)
        u = np.asarray(up, np.float64)
        if limit is None and alpha is None:
            return (g * _sigmoid(g) * u).astype(np.float32)
        # GPT-OSS clamped variant
        alpha = 1.0 if alpha is None else alpha
        if limit is not None:
            g = np.minimum(g, limit)
            u = np.clip(u, -limit, limit)
        return (g * _sigmoid(alpha * g) * (u + 1.0)).astype(np.float32)

    def gelu(self, x: Array) -> Array:
        x64 = np.asarray(x, np.float64)
        inner = math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)
        return (0.5 * x64 * (1.0 + np.tanh(inner))).astype(np.float32)

    def argmax(self, x: Array) -> np.ndarray:
        return np.asarray(np.argmax(np.asarray(x), axis=-1))
