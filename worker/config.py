"""Model hyper-parameters, independent of file format and backend.

`worker.gguf` builds a ModelConfig from GGUF metadata; models and backends read only this.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RopeConfig:
    dim: int                      # rotated dimensions per head (== head_dim unless partial)
    base: float = 10000.0         # theta
    style: str = "normal"         # "normal" (GPT-J/llama.cpp NORM: adjacent pairs) or "neox" (halves)
    scaling: str = "none"         # "none" | "linear" | "yarn"
    factor: float = 1.0           # context extension factor for linear / yarn
    original_context: int = 0     # yarn: training context before extension
    beta_fast: float = 32.0       # yarn ramp
    beta_slow: float = 1.0
    attn_factor: float = 1.0      # yarn magnitude scale multiplier


@dataclass(frozen=True)
class ModelConfig:
    architecture: str             # GGUF general.architecture: llama, qwen2, phi3, gpt2, gpt-oss
    vocab_size: int
    context_length: int           # training context (n_ctx_train)
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    norm_eps: float
    rope: RopeConfig | None = None          # None for learned absolute positions (gpt2)
    sliding_window: int = 0                 # 0 = none; gpt-oss applies it on alternate layers
    n_experts: int = 0
    n_experts_per_token: int = 0
    tied_embeddings: bool = False           # no output.weight: LM head reuses token_embd
    tokenizer_model: str = ""               # tokenizer.ggml.model: gpt2 (BPE) | llama (SPM) | ...
    extra: dict = field(default_factory=dict, hash=False, compare=False)
