"""The Backend interface: every op a model needs, in one place.

Arrays ("Array") are backend-native float32 arrays (numpy.ndarray or cupy.ndarray): models may
reshape and slice them (both libraries share that API) but do all arithmetic through the backend.
Weights ("Weight") are whatever `load_weight` returns: they keep the stored quant format
(kernels dequantize on the fly; the NumPy reference may dequantize and cache).

Shapes: activations are [T, D] (T tokens of the current step), heads are [T, H, head_dim].
Matmul follows GGUF/PyTorch Linear: weight [N, K], y = x @ W.T (+ bias) -> [T, N].
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.config import RopeConfig

Array = Any
Weight = Any


@dataclass
class KVCache:
    """Per-request K/V storage: k[layer], v[layer] each [n_ctx, n_kv_heads, head_dim]."""

    n_layers: int
    n_ctx: int
    n_kv_heads: int
    head_dim: int
    k: list
    v: list
    nbytes: int = 0


PREFILL_CHUNK = 64              # prompt tokens per prefill forward on the CPU reference


class Backend(ABC):
    name: str = "abstract"       # "numpy" | "cuda"
    device_name: str = ""        # "cpu-reference" or the GPU's name: reported with every result
    # Prompt tokens per prefill forward: the engine checks the cancel flag between chunks, so a
    # chunk bounds how long a cancel waits during prefill.
    prefill_chunk_tokens: int = PREFILL_CHUNK

    # -- memory ----------------------------------------------------------------------------
    @abstractmethod
    def load_weight(self, tensor) -> Weight:
        """Take a worker.quant.QuantTensor (kept in its stored format)."""

    @abstractmethod
    def asarray(self, host: np.ndarray) -> Array:
        """Host float array -> backend float32 array."""

    @abstractmethod
    def to_host(self, x: Array) -> np.ndarray:
        """Backend array -> host float32 ndarray (a copy for GPU backends)."""

    @abstractmethod
    def new_kv_cache(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim: int) -> KVCache:
        """Allocate a request's cache; GPU backends raise DeviceOOMError when it does not fit."""

    def free_kv_cache(self, cache: KVCache) -> None:
        cache.k.clear()
        cache.v.clear()

    def memory_report(self) -> dict:
        """Bytes in use: {'weights': .., 'kv_cache': .., 'workspace': ..}."""
        return {"weights": 0, "kv_cache": 0, "workspace": 0}

    # -- ops ---------------------------------------------------------------------------------
    @abstractmethod
    def embedding(self, table: Weight, ids: np.ndarray) -> Array:
        """Rows of table [V, D] for int ids [T] -> [T, D]."""

    @abstractmethod
    def matmul(self, x: Array, w: Weight, bias: Weight | None = None, expert: int | None = None) -> Array:
        """x [T, K] @ w[N, K].T (+ bias [N]) -> [T, N]. With expert=e, w is [E, N, K] and w[e] is used."""

    def matmul_add(self, x: Array, w: Weight, bias: Weight | None = None, *, residual: Array) -> Array:
        """A product added to the residual stream: add(residual, matmul(x, w, bias)), residual [T, N].
        (A backend may add the residual where the product is written: one launch less a block.)"""
        return self.add(residual, self.matmul(x, w, bias))

    def matmuls(self, x: Array, weights: list, biases: list | None = None) -> list:
        """Several products of one input: [matmul(x, w, b) for w, b in zip(weights, biases)] (biases
        default to None). A backend may run them in one launch (q, k, v; gate and up)."""
        biases = [None] * len(weights) if biases is None else list(biases)
        if len(biases) != len(weights):
            raise ValueError(f"{len(weights)} weights with {len(biases)} biases")
        return [self.matmul(x, w, b) for w, b in zip(weights, biases)]

    def matmul_swiglu(self, x: Array, w_gate: Weight, w_up: Weight) -> Array:
        """The gated FFN's first half: swiglu(matmul(x, w_gate), matmul(x, w_up)) -> [T, F]. A backend
        may compute both products and the activation in one launch."""
        gate, up = self.matmuls(x, [w_gate, w_up])
        return self.swiglu(gate, up)

    @abstractmethod
    def add(self, a: Array, b: Array) -> Array:
        """Residual connection: a + b, same shape."""

    @abstractmethod
    def mul(self, a: Array, b: Array) -> Array:
        """Elementwise a * b with NumPy broadcasting (used for MoE routing weights)."""

    @abstractmethod
    def rmsnorm(self, x: Array, weight: Weight, eps: float) -> Array:
        """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""

    @abstractmethod
    def layernorm(self, x: Array, weight: Weight, bias: Weight, eps: float) -> Array:
        """(x - mean) / sqrt(var + eps) * weight + bias, over the last axis."""

    @abstractmethod
    def rope(self, x: Array, positions: np.ndarray, rope: RopeConfig) -> Array:
        """Rotate x [T, H, head_dim] at absolute positions [T] (normal or neox pairing; yarn/linear)."""

    @abstractmethod
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
        sinks: Weight | None = None,
        scale: float | None = None,
        rope: RopeConfig | None = None,
    ) -> Array:
        """Causal attention for T new tokens at positions start_pos..start_pos+T-1.

        Stores k, v [T, n_kv_heads, head_dim] into cache[layer] at those positions, then
        attends q [T, n_heads, head_dim] over cache positions [0, start_pos+T) with the causal
        mask (and, if sliding_window > 0, only the last `sliding_window` positions including
        itself). GQA when n_heads > n_kv_heads (head h reads kv head h // (n_heads//n_kv_heads)).
        sinks [n_heads]: a learned logit per head added to the softmax denominator (GPT-OSS).
        scale defaults to 1/sqrt(head_dim). Returns [T, n_heads*head_dim].
        rope: q and k are first rotated at their positions, exactly as rope(q, positions, rope) and
        rope(k, ...) would (the cache then holds rotated keys); a backend may fuse that rotation.
        """

    @abstractmethod
    def swiglu(self, gate: Array, up: Array, *, limit: float | None = None, alpha: float | None = None) -> Array:
        """silu(gate) * up.

        With limit/alpha (GPT-OSS): gate = min(gate, limit); up = clip(up, -limit, limit);
        out = gate * sigmoid(alpha * gate) * (up + 1).
        """

    def mixture_of_experts(self, x: Array, router: Weight, router_bias: Weight | None, gate: Weight,
                           gate_bias: Weight | None, up: Weight, up_bias: Weight | None, down: Weight,
                           down_bias: Weight | None, n_used: int, *, limit: float | None = None,
                           alpha: float | None = None) -> Array:
        """GPT-OSS's expert FFN for x [T, D]: per token the n_used experts with the largest router logits
        (Wrouter x + b), weighted by the softmax over those logits, each expert e giving
        Wdown_e swiglu(Wgate_e x + bgate_e, Wup_e x + bup_e; limit, alpha) + bdown_e. Expert weights are
        stacked [E, N, K], biases [E, N].

        This definition routes on the host (top_k_softmax) and runs each chosen expert through the
        ops above; the CUDA backend routes a decode token on the device instead.
        """
        logits = self.to_host(self.matmul(x, router, router_bias)).astype(np.float64)
        experts, weights = top_k_softmax(logits, n_used)
        out = self.asarray(np.zeros(x.shape, np.float32))
        for e in np.unique(experts):
            tokens, slot = np.nonzero(experts == e)                        # each token at most once
            xe = x[tokens]
            g = self.matmul(xe, gate, gate_bias, expert=int(e))
            u = self.matmul(xe, up, up_bias, expert=int(e))
            y = self.matmul(self.swiglu(g, u, limit=limit, alpha=alpha), down, down_bias, expert=int(e))
            out[tokens] = self.add(out[tokens], self.mul(y, self.asarray(weights[tokens, slot][:, None])))
        return out

    @abstractmethod
    def gelu(self, x: Array) -> Array:
        """GELU, tanh approximation (GPT-2)."""

    @abstractmethod
    def argmax(self, x: Array) -> np.ndarray:
        """Index of the max over the last axis (first index on ties), on the host."""

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU)."""

    def run_forward(self, forward, ids: np.ndarray, cache: KVCache, start_pos: int) -> Array:
        """A model's forward pass `forward(ids, cache, start_pos)` -> logits, run as this backend runs
        it best: here, directly; the CUDA backend replays a captured graph for single-token steps."""
        return forward(ids, cache, start_pos)


def top_k_softmax(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of logits [T, E]: the k largest (ties: lower index first, a stable argsort of -logits)
    and the softmax over those k alone. Returns (experts [T, k] int, weights [T, k] float32)."""
    experts = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    chosen = np.take_along_axis(logits, experts, axis=-1)
    weights = np.exp(chosen - chosen.max(axis=-1, keepdims=True))
    return experts, (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)
