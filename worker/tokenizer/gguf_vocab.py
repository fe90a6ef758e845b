"""The tokenizer part of a GGUF file's metadata, read and checked once (the `tokenizer.ggml.*` keys).

Sources accepted: a metadata dict (key -> value), an object with a `.metadata` dict (our
worker.gguf.GGUFModelFile), or a path to a .gguf file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import numpy as np

from worker.errors import GGUFError, UnsupportedModelError


class TokenType(IntEnum):
    """tokenizer.ggml.token_type values (llama.cpp's llama_token_type)."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


@dataclass
class GGUFVocab:
    model: str                       # tokenizer.ggml.model: 'gpt2' (byte-level BPE) or 'llama' (SentencePiece)
    pre: str                         # tokenizer.ggml.pre: which pre-tokenizer split the text
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None
    merges: list[tuple[str, str]]
    name: str = ""                   # general.name (llama.cpp keys per-model token attributes on it)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    fim_ids: list[int] = field(default_factory=list)  # FIM pad/rep/sep: also end generation in llama.cpp
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None


_ID_KEYS = {
    "bos_id": "tokenizer.ggml.bos_token_id",
    "eos_id": "tokenizer.ggml.eos_token_id",
    "unk_id": "tokenizer.ggml.unknown_token_id",
    "pad_id": "tokenizer.ggml.padding_token_id",
    "eot_id": "tokenizer.ggml.eot_token_id",
    "eom_id": "tokenizer.ggml.eom_token_id",
}
_FIM_KEYS = ("tokenizer.ggml.fim_pad_token_id", "tokenizer.ggml.fim_rep_token_id",
             "tokenizer.ggml.fim_sep_token_id")
# Pre-tokenizer families whose BPE model adds BOS unless the file says otherwise (llama.cpp).
_ADD_BOS_BY_DEFAULT = {"llama3", "llama-v3", "llama-bpe", "falcon3", "tekken"}


def read_metadata(source) -> dict:
    """Metadata dict from a dict, an object with `.metadata`, or a .gguf path."""
    if isinstance(source, dict):
        return source
    if hasattr(source, "metadata") and isinstance(source.metadata, dict):
        return source.metadata
    if isinstance(source, (str, os.PathLike)):
        return _read_gguf_file(Path(source))
    raise TypeError(f"cannot read tokenizer metadata from {type(source).__name__}")


def _read_gguf_file(path: Path) -> dict:
    """The file's metadata through our validated reader (worker.gguf), which also reads vocabulary-only
    files (no tensors). A file it refuses is refused here with its reason: never read another way."""
    from worker.gguf import GGUFModelFile

    if not path.is_file():
        raise GGUFError(f"{path}: no such file", code="GGUF_UNREADABLE")
    with GGUFModelFile.open(path, detect=False) as gf:
        # Copy arrays: they may be views of the file map, which closes here.
        return {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in gf.metadata.items()}


def _as_list(value, key: str) -> list:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise GGUFError(f"{key} must be an array, got {type(value).__name__}", code="GGUF_BAD_METADATA", field=key)


def _optional_id(meta: dict, key: str, n_tokens: int) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    value = int(value)
    # llama.cpp ignores an out-of-range special id (with a warning); so do we.
    return value if 0 <= value < n_tokens else None


def parse_vocab(meta: dict) -> GGUFVocab:
    """Check the tokenizer keys and gather them; clear GGUFError/UnsupportedModelError otherwise."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise GGUFError("the file has no tokenizer (tokenizer.ggml.model is missing)",
                        code="GGUF_MISSING_METADATA", field="tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise UnsupportedModelError(f"tokenizer.ggml.model = {model!r}: only 'gpt2' (byte-level BPE) and "
                                    "'llama' (SentencePiece) are supported", code="UNSUPPORTED_TOKENIZER")
    if "tokenizer.ggml.tokens" not in meta:
        raise GGUFError("tokenizer.ggml.tokens is missing", code="GGUF_MISSING_METADATA",
                        field="tokenizer.ggml.tokens")
    tokens = _as_list(meta["tokenizer.ggml.tokens"], "tokenizer.ggml.tokens")
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise GGUFError("tokenizer.ggml.tokens must be a non-empty array of strings",
                        code="GGUF_BAD_METADATA", field="tokenizer.ggml.tokens")
    n = len(tokens)
    types = meta.get("tokenizer.ggml.token_type")
    types = [int(t) for t in _as_list(types, "tokenizer.ggml.token_type")] if types is not None else [1] * n
    scores = meta.get("tokenizer.ggml.scores")
    scores = [float(s) for s in _as_list(scores, "tokenizer.ggml.scores")] if scores is not None else None
    for key, arr in (("tokenizer.ggml.token_type", types), ("tokenizer.ggml.scores", scores)):
        if arr is not None and len(arr) < n:
            raise GGUFError(f"{key} has {len(arr)} entries for {n} tokens", code="GGUF_BAD_METADATA", field=key)
    merges = []
    if model == "gpt2":
        if "tokenizer.ggml.merges" not in meta:
            raise GGUFError("a byte-level BPE tokenizer needs tokenizer.ggml.merges",
                            code="GGUF_MISSING_METADATA", field="tokenizer.ggml.merges")
        merges = [_split_merge(m) for m in _as_list(meta["tokenizer.ggml.merges"], "tokenizer.ggml.merges")]

    pre = str(meta.get("tokenizer.ggml.pre") or "default")
    vocab = GGUFVocab(model=model, pre=pre, tokens=tokens, token_types=types[:n],
                      scores=scores[:n] if scores else None, merges=merges,
                      name=str(meta.get("general.name") or ""),
                      chat_template=meta.get("tokenizer.chat_template"))
    # Defaults as llama.cpp's llama_vocab::load sets them before reading the keys.
    if model == "llama":
        vocab.bos_id, vocab.eos_id, vocab.unk_id = 1, 2, 0
        vocab.add_bos, vocab.add_space_prefix = True, True
    else:
        vocab.add_bos = pre in _ADD_BOS_BY_DEFAULT
    for attr, key in _ID_KEYS.items():
        value = _optional_id(meta, key, n)
        if value is not None or key in meta:
            setattr(vocab, attr, value)
    vocab.fim_ids = [i for i in (_optional_id(meta, k, n) for k in _FIM_KEYS) if i is not None]
    for attr, key in (("add_bos", "tokenizer.ggml.add_bos_token"), ("add_eos", "tokenizer.ggml.add_eos_token"),
                      ("add_space_prefix", "tokenizer.ggml.add_space_prefix")):
        if key in meta:
            setattr(vocab, attr, bool(meta[key]))
    if vocab.add_bos and vocab.bos_id is None:
        raise GGUFError("tokenizer.ggml.add_bos_token is set but there is no BOS token",
                        code="GGUF_BAD_METADATA", field="tokenizer.ggml.bos_token_id")
    return vocab


def _split_merge(entry) -> tuple[str, str]:
    # llama.cpp splits at the first space after position 0 ("a b" -> ("a", "b")).
    if not isinstance(entry, str):
        raise GGUFError("tokenizer.ggml.merges must hold strings", code="GGUF_BAD_METADATA",
                        field="tokenizer.ggml.merges")
    pos = entry.find(" ", 1)
    if pos < 0:
        raise GGUFError(f"merge {entry!r} has no space between its two parts", code="GGUF_BAD_METADATA",
                        field="tokenizer.ggml.merges")
    return entry[:pos], entry[pos + 1:]
