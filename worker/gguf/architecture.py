"""Architecture detection: GGUF metadata (+ the tensor table) -> worker.config.ModelConfig.

Keys follow llama.cpp's names ({arch}.embedding_length, ...). Per architecture:

    llama   RMSNorm, RoPE "normal" (llama.cpp's converter permutes Q/K rows for GGML's NORM rope)
    qwen2   as llama with QKV bias, RoPE "neox"
    phi3    fused QKV and gate/up, RoPE "neox"
    gpt2    LayerNorm, learned absolute positions (no RoPE), MHA
    gpt-oss RMSNorm, RoPE "neox" with YaRN, GQA with attention sinks, sliding window on even
            layers (llama.cpp's swa pattern 2), MoE with expert_feed_forward_length

Missing keys raise GGUFError GGUF_MISSING_METADATA, wrongly typed or out-of-range ones
GGUF_BAD_METADATA, contradictions GGUF_INCONSISTENT_CONFIG; unsupported features raise
UnsupportedModelError.
"""
from __future__ import annotations

import math

from gguf import GGUFValueType

from worker.config import ModelConfig, RopeConfig
from worker.errors import GGUFError, UnsupportedModelError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "phi3", "gpt2", "gpt-oss")
ROPE_STYLE = {"llama": "normal", "qwen2": "neox", "phi3": "neox", "gpt-oss": "neox"}
TOKENIZER_KINDS = {"gpt2": "byte-level BPE", "llama": "SentencePiece"}

_INT_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
              GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}

# sanity ranges: far beyond any real model, tight enough to refuse bit-flipped values
_MAX = {"embedding_length": 1 << 17, "block_count": 1 << 12, "attention.head_count": 1 << 12,
        "attention.head_count_kv": 1 << 12, "feed_forward_length": 1 << 20,
        "expert_feed_forward_length": 1 << 20, "context_length": 1 << 24, "vocab_size": 1 << 22,
        "expert_count": 1 << 12, "expert_used_count": 1 << 12, "attention.key_length": 1 << 12,
        "attention.value_length": 1 << 12, "rope.dimension_count": 1 << 12,
        "attention.sliding_window": 1 << 24, "rope.scaling.original_context_length": 1 << 24}


class _Meta:
    """Typed access to one architecture's keys, with the error codes of this module."""

    def __init__(self, metadata: dict, types: dict, arch: str):
        self.m, self.t, self.arch = metadata, types, arch

    def key(self, name: str) -> str:
        return name if name.startswith(("general.", "tokenizer.")) else f"{self.arch}.{name}"

    def has(self, name: str) -> bool:
        return self.key(name) in self.m

    def _missing(self, name: str):
        raise GGUFError(f"{self.arch} model lacks required metadata {self.key(name)!r}",
                        code="GGUF_MISSING_METADATA")

    def int(self, name: str, default=None, *, required=False, minimum=1) -> int | None:
        k = self.key(name)
        if k not in self.m:
            if required:
                self._missing(name)
            return default
        vtype, value = self.t[k], self.m[k]
        if isinstance(vtype, tuple):
            raise UnsupportedModelError(f"{k} is a per-layer array; only one value for all layers is "
                                        "supported", code="UNSUPPORTED_MODEL")
        if vtype not in _INT_TYPES:
            raise GGUFError(f"{k} must be an integer, found {vtype.name} {value!r}", code="GGUF_BAD_METADATA")
        maximum = _MAX.get(name, 1 << 31)
        if not minimum <= value <= maximum:
            raise GGUFError(f"{k} = {value} is out of range [{minimum}, {maximum}]", code="GGUF_BAD_METADATA")
        return int(value)

    def float(self, name: str, default=None, *, required=False, positive=True) -> float | None:
        k = self.key(name)
        if k not in self.m:
            if required:
                self._missing(name)
            return default
        vtype, value = self.t[k], self.m[k]
        if vtype not in _FLOAT_TYPES and vtype not in _INT_TYPES:
            raise GGUFError(f"{k} must be a number, found {getattr(vtype, 'name', vtype)} {value!r}",
                            code="GGUF_BAD_METADATA")
        value = float(value)
        if not math.isfinite(value) or (positive and value <= 0):
            raise GGUFError(f"{k} = {value} must be a finite{' positive' if positive else ''} number",
                            code="GGUF_BAD_METADATA")
        return value

    def str(self, name: str, default=None) -> str | None:
        k = self.key(name)
        if k not in self.m:
            return default
        if self.t[k] != GGUFValueType.STRING:
            raise GGUFError(f"{k} must be a string, found {getattr(self.t[k], 'name', self.t[k])}",
                            code="GGUF_BAD_METADATA")
        return self.m[k]


def _inconsistent(message: str):
    raise GGUFError(message, code="GGUF_INCONSISTENT_CONFIG")


def architecture_of(metadata: dict, types: dict) -> str:
    if "general.architecture" not in metadata:
        raise GGUFError("metadata lacks 'general.architecture'", code="GGUF_MISSING_METADATA")
    if types["general.architecture"] != GGUFValueType.STRING:
        raise GGUFError("general.architecture must be a string", code="GGUF_BAD_METADATA")
    arch = metadata["general.architecture"]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {arch!r} is not supported (supported: "
                                    f"{', '.join(SUPPORTED_ARCHITECTURES)})", code="UNSUPPORTED_ARCHITECTURE")
    return arch


def _vocab_size(meta: _Meta, tensors: dict) -> int:
    n_tokens = None
    if "tokenizer.ggml.tokens" in meta.m:
        if meta.t["tokenizer.ggml.tokens"] != (GGUFValueType.ARRAY, GGUFValueType.STRING):
            raise GGUFError("tokenizer.ggml.tokens must be an array of strings", code="GGUF_BAD_METADATA")
        n_tokens = len(meta.m["tokenizer.ggml.tokens"])
    declared = meta.int("vocab_size")
    if n_tokens is None and declared is None:
        raise GGUFError(f"{meta.arch} model lacks both 'tokenizer.ggml.tokens' and "
                        f"'{meta.key('vocab_size')}': its vocabulary size is unknown", code="GGUF_MISSING_METADATA")
    if n_tokens is not None and declared is not None and n_tokens != declared:
        _inconsistent(f"{meta.key('vocab_size')} = {declared} but tokenizer.ggml.tokens has {n_tokens} entries")
    vocab = n_tokens if n_tokens is not None else declared
    if vocab == 0:
        _inconsistent("the vocabulary is empty")
    return vocab


def _rope(meta: _Meta, arch: str, head_dim: int) -> RopeConfig | None:
    if arch not in ROPE_STYLE:
        return None
    dim = meta.int("rope.dimension_count", head_dim)
    if dim > head_dim or dim % 2:
        _inconsistent(f"{meta.key('rope.dimension_count')} = {dim} must be even and at most the head "
                      f"dimension {head_dim}")
    scaling = meta.str("rope.scaling.type", "none")
    factor = meta.float("rope.scaling.factor", 1.0)
    if scaling == "none" and meta.has("rope.scale_linear"):     # older files
        scaling, factor = "linear", meta.float("rope.scale_linear")
    if scaling not in ("none", "linear", "yarn"):
        raise UnsupportedModelError(f"RoPE scaling {scaling!r} is not supported (none, linear, yarn)",
                                    code="UNSUPPORTED_ROPE_SCALING")
    if scaling == "none":
        factor = 1.0
    original = meta.int("rope.scaling.original_context_length", 0, minimum=0)
    if scaling == "yarn" and not original:
        raise GGUFError(f"YaRN RoPE needs {meta.key('rope.scaling.original_context_length')}",
                        code="GGUF_MISSING_METADATA")
    return RopeConfig(
        dim=dim,
        base=meta.float("rope.freq_base", 10000.0),
        style=ROPE_STYLE[arch],
        scaling=scaling,
        factor=factor,
        original_context=original,
        beta_fast=meta.float("rope.scaling.yarn_beta_fast", 32.0),
        beta_slow=meta.float("rope.scaling.yarn_beta_slow", 1.0),
        attn_factor=meta.float("rope.scaling.attn_factor", meta.float("rope.scaling.yarn_attn_factor", 1.0)),
        # GPT-OSS: its reference and transformers' published config (`truncate: false`) do not round the
        # YaRN ramp to whole pairs; llama.cpp rounds for every model.
        truncate=arch != "gpt-oss",
    )


def _check_block_tensors(tensors: dict, n_layers: int) -> None:
    """Tensors of a block beyond block_count would be silently ignored (a truncated model);
    llama.cpp refuses such files too ("wrong number of tensors")."""
    beyond = sorted(name for name in tensors if name.startswith("blk.")
                    and name.split(".")[1].isdigit() and int(name.split(".")[1]) >= n_layers)
    if beyond:
        _inconsistent(f"block_count is {n_layers}, but the file holds tensors of later blocks "
                      f"({', '.join(beyond[:3])}{', ...' if len(beyond) > 3 else ''})")


def _refuse_longrope(meta: _Meta, tensors: dict) -> None:
    """llama.cpp writes Phi-3's LongRoPE (the 128k models) as per-dimension factor tensors
    rope_factors_long/short (no rope.scaling.type key); the config must not claim plain RoPE."""
    factors = [n for n in ("rope_factors_long.weight", "rope_factors_short.weight") if n in tensors]
    if factors:
        raise UnsupportedModelError(
            f"{meta.arch} model uses LongRoPE ({', '.join(factors)}); RoPE scaling 'longrope' is not "
            "supported (none, linear, yarn)", code="UNSUPPORTED_ROPE_SCALING")


def detect_config(metadata: dict, types: dict, tensors: dict) -> ModelConfig:
    """ModelConfig for a file's metadata and tensor table (TensorInfo by name)."""
    arch = architecture_of(metadata, types)
    meta = _Meta(metadata, types, arch)
    moe = arch == "gpt-oss"

    hidden = meta.int("embedding_length", required=True)
    n_layers = meta.int("block_count", required=True)
    n_heads = meta.int("attention.head_count", required=True)
    n_kv_heads = meta.int("attention.head_count_kv", n_heads)
    context = meta.int("context_length", required=True)
    ffn = meta.int("expert_feed_forward_length" if moe else "feed_forward_length", required=True)
    eps_key = "attention.layer_norm_epsilon" if arch == "gpt2" else "attention.layer_norm_rms_epsilon"
    norm_eps = meta.float(eps_key, required=True)

    if n_heads % n_kv_heads:
        _inconsistent(f"{n_heads} attention heads cannot be shared by {n_kv_heads} KV heads")
    key_length = meta.int("attention.key_length")
    value_length = meta.int("attention.value_length", key_length)
    if key_length is None:
        if hidden % n_heads:
            _inconsistent(f"embedding length {hidden} is not divisible by {n_heads} heads")
        head_dim = hidden // n_heads
    else:
        head_dim = key_length
    if value_length is not None and value_length != head_dim:
        raise UnsupportedModelError(f"value head size {value_length} differs from key head size {head_dim}",
                                    code="UNSUPPORTED_MODEL")
    if arch == "gpt2" and n_kv_heads != n_heads:
        _inconsistent(f"gpt2 uses multi-head attention, but head_count_kv {n_kv_heads} != head_count {n_heads}")

    if moe:
        n_experts = meta.int("expert_count", required=True)
        n_used = meta.int("expert_used_count", required=True)
        if n_used > n_experts:
            _inconsistent(f"expert_used_count {n_used} exceeds expert_count {n_experts}")
    else:
        n_experts, n_used = meta.int("expert_count", 0, minimum=0), 0
        if n_experts:
            raise UnsupportedModelError(f"{arch} with {n_experts} experts (MoE) is not supported",
                                        code="UNSUPPORTED_MODEL")

    vocab = _vocab_size(meta, tensors)
    embd = tensors.get("token_embd.weight")
    if embd is not None and tuple(embd.shape) != (vocab, hidden):
        _inconsistent(f"token_embd.weight has shape {tuple(embd.shape)}, but vocab {vocab} x embedding "
                      f"length {hidden} was expected")

    _check_block_tensors(tensors, n_layers)
    if arch == "phi3":
        _refuse_longrope(meta, tensors)

    sliding_window = meta.int("attention.sliding_window", 0, required=moe, minimum=0 if not moe else 1)
    # GPT-OSS specifics GGUF has no keys for: llama.cpp's constants for the architecture (swa pattern 2:
    # layer i uses the window when i % 2 == 0; SwiGLU clamped at 7 with alpha 1.702), as transformers' config.
    gpt_oss = {"sliding_window_pattern": 2, "attention_sinks": True, "swiglu_limit": 7.0, "swiglu_alpha": 1.702,
               "fused_gate_up_exps": "blk.0.ffn_gate_up_exps.weight" in tensors} if moe else {}

    tok_model = meta.str("tokenizer.ggml.model", "")
    return ModelConfig(
        architecture=arch,
        vocab_size=vocab,
        context_length=context,
        hidden_size=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        ffn_size=ffn,
        norm_eps=norm_eps,
        rope=_rope(meta, arch, head_dim),
        sliding_window=sliding_window,
        n_experts=n_experts,
        n_experts_per_token=n_used,
        tied_embeddings="output.weight" not in tensors,
        tokenizer_model=tok_model,
        fused_qkv=arch == "phi3" and "blk.0.attn_qkv.weight" in tensors,
        **gpt_oss,
    )
