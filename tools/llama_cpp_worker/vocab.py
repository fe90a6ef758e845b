"""Token bytes from the GGUF vocabulary, for the tokens whose bytes llama-server does not return.

llama-server reports a generated token's bytes (`completion_probabilities[].bytes`) only when its
text so far is whole UTF-8; a token that ends inside a character comes back with its id alone.
Its bytes are then derived here the way llama.cpp's `llama_vocab::token_to_piece` derives them
(src/llama-vocab.cpp): byte-level BPE (`gpt2`) undoes GPT-2's bytes-to-unicode map;
SentencePiece (`llama`) turns `<0xNN>` into the byte NN and U+2581 into a space.
"""
from __future__ import annotations

TOKEN_TYPE_BYTE = 6            # gguf-py TokenType.BYTE


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode (openai/gpt-2 encoder.py)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class Vocabulary:
    def __init__(self, reader):
        """`reader`: the file's gguf.GGUFReader."""
        model = reader.get_field("tokenizer.ggml.model")
        self.kind = model.contents() if model is not None else ""
        self._tokens = reader.get_field("tokenizer.ggml.tokens").contents()
        types = reader.get_field("tokenizer.ggml.token_type")
        self._types = types.contents() if types is not None else []
        self._byte_of = _gpt2_unicode_to_byte()

    def piece(self, token_id: int) -> bytes:
        text = self._tokens[token_id]
        if self.kind == "gpt2":
            return bytes(self._byte_of[c] for c in text) if all(c in self._byte_of for c in text) \
                else text.encode("utf-8")
        if self._types and self._types[token_id] == TOKEN_TYPE_BYTE and text.startswith("<0x"):
            return bytes([int(text[3:5], 16)])
        return text.replace("\u2581", " ").encode("utf-8")
