"""Everything between text and token ids (docs/CONTRACTS.md, "Tokenizer"; docs/tokenizers.md).

    tok = load_tokenizer(gguf_path_or_metadata_or_GGUFModelFile, tokenizer_json=None)
    tok.encode(text, add_special=True) -> list[int]
    tok.decode(ids, skip_special=True) -> str
    tok.stream_decoder() -> StreamDecoder (push(id) -> whole UTF-8 characters; flush())
    tok.apply_chat_template(messages, add_generation_prompt=True) -> str

Backends: GGUF byte-level BPE (`tokenizer.ggml.model = gpt2`), GGUF SentencePiece (`llama`),
and HF tokenizer.json (hf_json.py) when a model ships one.
"""
from __future__ import annotations

import os

from worker.tokenizer.base import Tokenizer
from worker.tokenizer.gguf_tokenizer import GGUFTokenizer
from worker.tokenizer.gguf_vocab import GGUFVocab, TokenType, parse_vocab, read_metadata
from worker.tokenizer.stream import StreamDecoder

__all__ = ["load_tokenizer", "Tokenizer", "GGUFTokenizer", "StreamDecoder", "GGUFVocab", "TokenType"]


def load_tokenizer(source=None, tokenizer_json: str | os.PathLike | None = None) -> Tokenizer:
    """Tokenizer of a model.

    source: the GGUF metadata dict, an object with `.metadata` (GGUFModelFile), or a .gguf path.
    tokenizer_json: a HF tokenizer.json (path or JSON text); when given, it does the text <-> ids
    work and the GGUF (if any) still supplies BOS/EOS flags and the chat template.
    """
    if tokenizer_json is not None:
        from worker.tokenizer.hf_json import HFJsonTokenizer

        meta = read_metadata(source) if source is not None else None
        return HFJsonTokenizer(tokenizer_json, gguf_metadata=meta)
    if source is None:
        raise TypeError("load_tokenizer needs a GGUF source or a tokenizer_json")
    return GGUFTokenizer(parse_vocab(read_metadata(source)))
