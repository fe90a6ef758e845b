"""How much device memory a model needs at a given context: refuse models that cannot fit.

    estimate_device_bytes(gguf_file_or_config, n_ctx) -> {weights, kv_cache, workspace, total}

weights    the tensors exactly as stored (kernels dequantize on the fly; nothing is expanded).
           From a GGUFModelFile (or a path) it is the sum of the tensor table; from a bare
           ModelConfig it is a float16 estimate of the parameter count (pass weights_bytes
           to override).
kv_cache   K and V for every layer and position: 2 * n_layers * n_ctx * n_kv_heads * head_dim
           * kv_dtype_bytes (float16 by default, as the CUDA backend stores it). Sliding-window
           layers are counted at full context: a conservative bound.
workspace  activations of one prefill chunk of `prefill_tokens` (at most n_ctx) in float32:
           hidden states and projections, the FFN (top-k experts for MoE), one layer's attention
           scores [heads, T, n_ctx], the logits [T, vocab], the prefill products' split input
           (3 floats a value of the widest product input); plus the prefill products' fixed
           scratch (the dequantization tile, cuBLAS's workspace) and a reserve for kernels.
All values are ints (bytes).
"""
from __future__ import annotations

import os

from worker.config import ModelConfig

FLOAT32 = 4
WORKSPACE_RESERVE = 64 << 20        # kernel scratch, sampling buffers, CUDA graph pools
PREFILL_SCRATCH = (64 << 20) + (32 << 20)   # backend/cuda.py TILE_MAX_BYTES, kernels/matmul.py CUBLAS_WORKSPACE_BYTES


def kv_cache_bytes(cfg: ModelConfig, n_ctx: int, kv_dtype_bytes: int = 2) -> int:
    return 2 * cfg.n_layers * n_ctx * cfg.n_kv_heads * cfg.head_dim * kv_dtype_bytes


def workspace_bytes(cfg: ModelConfig, n_ctx: int, prefill_tokens: int = 512) -> int:
    t = max(1, min(n_ctx, prefill_tokens))
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    ffn_width = cfg.ffn_size * max(1, cfg.n_experts_per_token)
    per_token = (
        4 * cfg.hidden_size             # residual, normed input, attention output, FFN output
        + q_dim + 2 * kv_dim            # Q, K, V
        + 3 * ffn_width                 # gate, up, activation
        + cfg.n_experts                 # router logits
        + cfg.vocab_size                # logits
    )
    scores = cfg.n_heads * t * n_ctx    # one layer's attention scores at a time
    split_input = 3 * t * max(cfg.hidden_size, q_dim, ffn_width)
    return FLOAT32 * (t * per_token + scores + split_input) + PREFILL_SCRATCH + WORKSPACE_RESERVE


def parameter_bytes(cfg: ModelConfig, bytes_per_param: float = 2.0) -> int:
    """Approximate weights of a config without a file (float16 unless told otherwise)."""
    d, q_dim, kv_dim = cfg.hidden_size, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    attn = d * (q_dim + 2 * kv_dim) + q_dim * d
    ffn = 3 * d * cfg.ffn_size * max(1, cfg.n_experts) + (d * cfg.n_experts)
    embd = cfg.vocab_size * d * (1 if cfg.tied_embeddings else 2)
    return int((cfg.n_layers * (attn + ffn + 2 * d) + embd + d) * bytes_per_param)


def estimate_device_bytes(gguf_file_or_config, n_ctx: int, *, kv_dtype_bytes: int = 2,
                          prefill_tokens: int = 512, weights_bytes: int | None = None) -> dict:
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be at least 1, got {n_ctx}")
    source = gguf_file_or_config
    if isinstance(source, (str, os.PathLike)):
        from worker.gguf import GGUFModelFile

        with GGUFModelFile.open(source) as gf:
            return estimate_device_bytes(gf, n_ctx, kv_dtype_bytes=kv_dtype_bytes,
                                         prefill_tokens=prefill_tokens, weights_bytes=weights_bytes)
    if isinstance(source, ModelConfig):
        cfg = source
        weights = weights_bytes if weights_bytes is not None else parameter_bytes(cfg)
    else:                                   # a GGUFModelFile
        cfg = source.config
        weights = weights_bytes if weights_bytes is not None else sum(t.nbytes for t in source.tensors.values())
    kv = kv_cache_bytes(cfg, n_ctx, kv_dtype_bytes)
    work = workspace_bytes(cfg, n_ctx, prefill_tokens)
    return {"weights": int(weights), "kv_cache": int(kv), "workspace": int(work),
            "total": int(weights + kv + work)}
