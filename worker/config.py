"""Model hyper-parameters, independent of file format and backend.

`worker.gguf` builds a ModelConfig from GGUF metadata; models and backends read only this.
"""
from __future__ import annotations

from dataclasses import dataclass


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
    truncate: bool = True         # yarn: round the ramp ends to whole pairs (llama.cpp; transformers'
                                  # `truncate`, which GPT-OSS's published config sets false)


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
    sliding_window: int = 0                 # 0 = none
    sliding_window_pattern: int = 0         # layer i uses the window when i % pattern < pattern - 1 (0: all)
    n_experts: int = 0
    n_experts_per_token: int = 0
    tied_embeddings: bool = False           # no output.weight: LM head reuses token_embd
    tokenizer_model: str = ""               # tokenizer.ggml.model: gpt2 (BPE) | llama (SPM) | ...
    fused_qkv: bool = False                 # phi3: one attn_qkv tensor, split at load
    fused_gate_up_exps: bool = False        # gpt-oss: [gate; up] experts in one tensor (newer converters)
    attention_sinks: bool = False           # gpt-oss: one learned logit per head in the softmax denominator
    swiglu_limit: float = 0.0               # gpt-oss: clamp of the gated SwiGLU (0: none)
    swiglu_alpha: float = 1.0               # gpt-oss: sigmoid slope of the gated SwiGLU

    def uses_sliding_window(self, layer: int) -> bool:
        """llama.cpp's swa pattern and transformers' layer_types (gpt-oss: pattern 2, even layers)."""
        if self.sliding_window <= 0:
            return False
        pattern = self.sliding_window_pattern
        return pattern == 0 or layer % pattern < pattern - 1
