"""What the GGUF file says about itself, read with gguf-py (for /health)."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

# llama.cpp's default KV cache type is F16 (common/common.h: cache_type_k/v = GGML_TYPE_F16).
KV_BYTES_PER_VALUE = 2


@dataclasses.dataclass(frozen=True)
class FileFacts:
    name: str
    path: str
    architecture: str
    quant_kind: str              # the tensor type holding most of the weight bytes
    tokenizer_kind: str          # tokenizer.ggml.model
    vocab_size: int
    context_length: int          # the model's training context
    weight_bytes: int
    kv_bytes_per_token: int      # K and V over every layer at F16


def _value(reader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def read_facts(path: Path) -> FileFacts:
    import gguf

    reader = gguf.GGUFReader(path)
    arch = _value(reader, "general.architecture")
    by_type: Counter = Counter()
    for tensor in reader.tensors:
        by_type[tensor.tensor_type.name] += int(tensor.n_bytes)
    n_layer = int(_value(reader, f"{arch}.block_count", 0))
    n_embd = int(_value(reader, f"{arch}.embedding_length", 0))
    n_head = int(_value(reader, f"{arch}.attention.head_count", 1) or 1)
    n_head_kv = int(_value(reader, f"{arch}.attention.head_count_kv", n_head) or n_head)
    head_dim = int(_value(reader, f"{arch}.attention.key_length", n_embd // n_head) or n_embd // n_head)
    return FileFacts(
        name=path.name, path=str(path), architecture=arch,
        quant_kind=by_type.most_common(1)[0][0],
        tokenizer_kind=str(_value(reader, "tokenizer.ggml.model", "")),
        vocab_size=len(reader.get_field("tokenizer.ggml.tokens").data),
        context_length=int(_value(reader, f"{arch}.context_length")),
        weight_bytes=sum(by_type.values()),
        kv_bytes_per_token=2 * n_layer * n_head_kv * head_dim * KV_BYTES_PER_VALUE,
    )
