"""Streaming detokenization that only ever emits whole UTF-8 characters.

A token may end in the middle of a character (byte-level BPE splits emoji and CJK into byte
tokens; SentencePiece falls back to <0xNN> bytes). The decoder keeps the bytes of an incomplete
character until the next token completes it. Bytes that can never form a character become
U+FFFD, exactly as `bytes.decode("utf-8", "replace")` would replace them in the whole output,
so the concatenation of everything pushed plus flush() equals decoding all bytes at once.
The work is done by Python's incremental UTF-8 decoder (codecs), which keeps that guarantee.
"""
from __future__ import annotations

import codecs
from typing import Callable


class StreamDecoder:
    def __init__(self, token_bytes: Callable[[int], bytes], skip: Callable[[int], bool] = lambda _id: False):
        self._token_bytes = token_bytes
        self._skip = skip
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token: whole characters only (possibly '')."""
        if self._skip(token_id):
            return ""
        return self._utf8.decode(self._token_bytes(token_id), final=False)

    def push_bytes(self, data: bytes) -> str:
        return self._utf8.decode(data, final=False)

    def flush(self) -> str:
        """End of stream: bytes of an unfinished character become U+FFFD."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    @property
    def pending(self) -> bytes:
        """Bytes held back, waiting for the rest of their character."""
        return self._utf8.getstate()[0]
