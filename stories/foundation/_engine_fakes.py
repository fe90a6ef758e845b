"""Small stand-ins for a model and a tokenizer, for testing the engine's own rules (stop
sequences, EOS, budgets, cancellation, error handling) with scripted, known outputs.

ScriptedModel returns logits whose single maximum is the next token of its script, so a greedy
engine generates exactly the script. FakeTokenizer has a byte vocabulary chosen by the test; its
stream decoder is Python's incremental UTF-8 decoder (independent of worker.tokenizer).
"""
from __future__ import annotations

import codecs
from types import SimpleNamespace

import numpy as np

from worker.backend.base import PREFILL_CHUNK


class FakeCache:
    def __init__(self, size: int):
        self.size = size
        self.freed = False


class FakeBackend:
    prefill_chunk_tokens = PREFILL_CHUNK

    def __init__(self):
        self.allocated: list[FakeCache] = []

    def to_host(self, x):
        return np.array(x, dtype=np.float32, copy=True)

    def free_kv_cache(self, cache: FakeCache) -> None:
        assert not cache.freed, "KV cache freed twice"
        cache.freed = True

    @property
    def live_caches(self) -> int:
        return sum(not c.freed for c in self.allocated)


class ScriptedModel:
    """Predicts `script[k]` as the k-th generated token (greedy), whatever the prompt."""

    def __init__(self, script, vocab_size: int, context_length: int = 512, fail_at: int | None = None,
                 nan_at: int | None = None, prompt_len: int | None = None):
        self.script = list(script)
        self.vocab_size = vocab_size
        self.config = SimpleNamespace(context_length=context_length)
        self.backend = FakeBackend()
        self.prompt_len = prompt_len            # None: the first forward (start_pos 0) is the whole prompt
        self._fixed_prompt_len = prompt_len is not None
        self.forward_calls: list[tuple[int, int]] = []      # (start_pos, n_ids)
        self.fail_at = fail_at
        self.nan_at = nan_at

    def new_cache(self, n_ctx: int) -> FakeCache:
        cache = FakeCache(n_ctx)
        self.backend.allocated.append(cache)
        return cache

    def forward(self, ids, cache: FakeCache, start_pos: int):
        ids = np.asarray(ids)
        assert not cache.freed
        assert start_pos + len(ids) <= cache.size, "forward past the end of the KV cache"
        self.forward_calls.append((start_pos, len(ids)))
        if start_pos == 0 and not self._fixed_prompt_len:
            self.prompt_len = len(ids)
        step = start_pos + len(ids) - self.prompt_len          # tokens generated so far
        if self.fail_at is not None and step >= self.fail_at:
            raise RuntimeError("simulated kernel failure")
        logits = np.zeros((len(ids), self.vocab_size), np.float32)
        if 0 <= step < len(self.script):           # step < 0: a prefill chunk before the prompt's end
            logits[-1, self.script[step]] = 10.0
        if self.nan_at is not None and step >= self.nan_at:
            logits[-1, 0] = np.nan
        return logits


class _Utf8StreamDecoder:
    def __init__(self, token_bytes, skip):
        self._bytes, self._skip = token_bytes, skip
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return "" if self._skip(token_id) else self._dec.decode(self._bytes[token_id])

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class FakeTokenizer:
    """Vocabulary = the given byte strings; `special` ids decode to nothing; `eos` ends generation."""

    def __init__(self, pieces: list[bytes], eos: int | None = None, special=()):
        self.pieces = list(pieces)
        self.vocab_size = len(self.pieces)
        self.eos_id = eos
        self.eos_ids = frozenset({eos}) if eos is not None else frozenset()
        self.special = frozenset(special) | self.eos_ids

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode()
        return [self.pieces.index(bytes([b])) for b in data]

    def stream_decoder(self):
        return _Utf8StreamDecoder(self.pieces, lambda i: i in self.special)


def byte_vocab(extra: list[bytes] = ()) -> list[bytes]:
    """All 256 single bytes (id = byte value), then `extra` multi-byte pieces."""
    return [bytes([b]) for b in range(256)] + list(extra)
