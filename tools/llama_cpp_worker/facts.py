"""What the GGUF file says about itself, read with gguf-py (for /health)."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

from tools.llama_cpp_worker.vocab import Vocabulary


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


def _value(reader, key: str, default=None):
    field = reader.get_field(key)
    return default if field is None else field.contents()


def read_file(path: Path) -> tuple[FileFacts, Vocabulary]:
    """The file's facts and its vocabulary, from one read of the file by gguf-py."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = _value(reader, "general.architecture")
    by_type: Counter = Counter()
    for tensor in reader.tensors:
        by_type[tensor.tensor_type.name] += int(tensor.n_bytes)
    facts = FileFacts(
        name=path.name, path=str(path), architecture=arch,
        quant_kind=by_type.most_common(1)[0][0],
        tokenizer_kind=str(_value(reader, "tokenizer.ggml.model", "")),
        vocab_size=len(reader.get_field("tokenizer.ggml.tokens").data),
        context_length=int(_value(reader, f"{arch}.context_length")),
        weight_bytes=sum(by_type.values()),
    )
    return facts, Vocabulary(reader)
