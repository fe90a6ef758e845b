"""tokenizer.json backend: HF `tokenizers` does text -> ids for models that ship one (GPT-OSS's
o200k_harmony, or any HF repository).

We read the JSON to learn how tokens map back to bytes (so streaming and decode share one byte
table), which tokens are special, and which ids are BOS/EOS. When a GGUF is given too, its
metadata decides BOS/EOS flags and supplies the chat template.
"""
from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from worker.errors import TokenizerJSONError
from worker.tokenizer.base import Tokenizer, end_of_generation_ids
from worker.tokenizer.byte_level import piece_to_bytes
from worker.tokenizer.spm import SPACE

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _load_json(source) -> str:
    if isinstance(source, (bytes, bytearray)):
        try:
            return source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenizerJSONError(f"tokenizer.json is not UTF-8 text: {exc}") from exc
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        path = Path(source)
        if path.is_dir():
            path = path / "tokenizer.json"
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenizerJSONError(f"cannot read tokenizer.json at {path}: {exc}") from exc
    return source


def _component_types(node) -> set[str]:
    """All 'type' names inside a (possibly nested Sequence) normalizer/pre-tokenizer/decoder."""
    found: set[str] = set()
    if isinstance(node, dict):
        if "type" in node:
            found.add(node["type"])
        for value in node.values():
            found |= _component_types(value)
    elif isinstance(node, list):
        for value in node:
            found |= _component_types(value)
    return found


class HFJsonTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, source, gguf_metadata: dict | None = None):
        text = _load_json(source)
        try:
            spec = json.loads(text)
            self._engine = HFTokenizer.from_str(text)
        except Exception as exc:  # json.JSONDecodeError, tokenizers' Exception for a bad model
            raise TokenizerJSONError(f"not a usable tokenizer.json: {exc}") from exc
        # parse_special=False flips the engine's encode_special_tokens flag for one call.
        self._lock = threading.Lock()
        self.spec = spec

        n = self._engine.get_vocab_size(with_added_tokens=True)
        texts = [self._engine.id_to_token(i) or "" for i in range(n)]
        added = {t["id"]: t for t in spec.get("added_tokens", [])}
        special_ids = [i for i, t in added.items() if t.get("special")]
        super().__init__(self._byte_table(spec, texts, added), texts, special_ids)

        decoder_types = _component_types(spec.get("decoder"))
        pre_types = _component_types(spec.get("pre_tokenizer")) | _component_types(spec.get("normalizer"))
        # Metaspace/Prepend('▁') tokenizers put a space in front of the text; decode drops it.
        self._strip_leading_space = "Strip" in decoder_types or (
            "Metaspace" in decoder_types and "ByteLevel" not in pre_types)
        self._configure_specials(gguf_metadata or {}, texts)

    # -- construction -------------------------------------------------------------------------
    def _byte_table(self, spec: dict, texts: list[str], added: dict) -> list[bytes]:
        kinds = _component_types(spec.get("pre_tokenizer")) | _component_types(spec.get("decoder"))
        model = spec.get("model", {})
        byte_level = "ByteLevel" in kinds
        sentencepiece_like = not byte_level and ("Metaspace" in kinds or model.get("byte_fallback")
                                                 or "ByteFallback" in kinds)
        table = []
        for i, piece in enumerate(texts):
            if i in added:
                table.append(piece.encode("utf-8"))
            elif byte_level:
                table.append(piece_to_bytes(piece))
            elif sentencepiece_like:
                if _BYTE_TOKEN.fullmatch(piece):
                    table.append(bytes([int(piece[3:5], 16)]))
                else:
                    table.append(piece.replace(SPACE, " ").encode("utf-8"))
            else:
                # WordPiece and other decoders: what the library's decoder makes of the token alone.
                table.append(self._engine.decode([i], skip_special_tokens=False).encode("utf-8"))
        return table

    def _configure_specials(self, meta: dict, texts: list[str]) -> None:
        def meta_id(key):
            value = meta.get(key)
            return int(value) if value is not None and 0 <= int(value) < len(texts) else None

        if meta:
            self.bos_id = meta_id("tokenizer.ggml.bos_token_id")
            self.eos_id = meta_id("tokenizer.ggml.eos_token_id")
            self.pad_id = meta_id("tokenizer.ggml.padding_token_id")
            self.unk_id = meta_id("tokenizer.ggml.unknown_token_id")
            self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and self.bos_id is not None
            self.add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and self.eos_id is not None
            self.chat_template = meta.get("tokenizer.chat_template")
        else:
            # What the tokenizer.json's own post-processor adds around a text is its BOS/EOS.
            plain = self._engine.encode("a", add_special_tokens=False).ids
            full = self._engine.encode("a", add_special_tokens=True).ids
            if plain and len(full) > len(plain):
                if full[0] != plain[0]:
                    self.bos_id, self.add_bos = full[0], True
                if full[-1] != plain[-1]:
                    self.eos_id, self.add_eos = full[-1], True
            unk = self.spec.get("model", {}).get("unk_token")
            self.unk_id = self._engine.token_to_id(unk) if unk else None
        eog = end_of_generation_ids(texts, self.eos_id)
        if self.eos_id is None and eog:
            self.eos_id = min(eog)
        self.eos_ids = eog

    # -- encode / decode ----------------------------------------------------------------------
    def _encode_text(self, text: str, parse_special: bool) -> list[int]:
        with self._lock:
            self._engine.encode_special_tokens = not parse_special
            try:
                return self._engine.encode(text, add_special_tokens=False).ids
            finally:
                self._engine.encode_special_tokens = False

    def decode(self, ids, skip_special: bool = True) -> str:
        text = super().decode(ids, skip_special)
        if self._strip_leading_space and text.startswith(" "):
            text = text[1:]
        return text
