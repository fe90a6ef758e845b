"""SentencePiece BPE from GGUF metadata (`tokenizer.ggml.model = llama`: Llama 2, Phi-3).

The algorithm is llama.cpp's llm_tokenizer_spm (itself SentencePiece's BPE encoder):

    1. the text (spaces already written as '▁') starts as one symbol per character;
    2. repeatedly merge the adjacent pair whose concatenation is a vocabulary piece with the
       highest score (ties: the leftmost pair), until no adjacent pair forms a piece;
    3. a symbol that is not a piece is written as byte-fallback tokens <0xNN>, one per UTF-8 byte
       (or the unknown token when the vocabulary has no byte tokens).

Only NORMAL pieces take part in merges, as in SentencePiece: control, byte and unused entries
are never produced from text (llama.cpp would merge a literal "<0x0A>" into the newline byte token).

Speed: when no piece has '▁' after another character (true of Llama 2 and Phi-3), no merge can
cross the start of a '▁' run that follows a letter, so the text is cut there and each cut is
encoded once and cached; the result is the same as encoding the whole text at once.
"""
from __future__ import annotations

import heapq
import re

from worker.tokenizer.gguf_vocab import GGUFVocab, TokenType

SPACE = "\u2581"  # '▁', SentencePiece's visible space
_SEGMENTS = re.compile(f"{SPACE}*[^{SPACE}]*")
_CACHE_LIMIT = 200_000


class SentencePieceBPE:
    def __init__(self, vocab: GGUFVocab):
        n = len(vocab.tokens)
        self.score = vocab.scores or [0.0] * n
        self.piece_id: dict[str, int] = {}
        for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types)):
            if kind == TokenType.NORMAL:
                self.piece_id[text] = i
        all_ids = {text: i for i, text in enumerate(vocab.tokens)}
        self.byte_ids = [self._byte_token(b, all_ids, vocab.unk_id) for b in range(256)]
        self.segmentable = not any(
            SPACE in piece[1:] and re.search(f"[^{SPACE}]{SPACE}", piece) for piece in self.piece_id)
        self._cache: dict[str, tuple[int, ...]] = {}

    @staticmethod
    def _byte_token(b: int, ids: dict[str, int], unk_id: int | None) -> int | None:
        tid = ids.get(f"<0x{b:02X}>")
        if tid is None and b < 0x80:
            tid = ids.get(chr(b))  # llama.cpp's fallback: the byte as a one-character piece
        return tid if tid is not None else unk_id

    def encode(self, text: str) -> list[int]:
        """Ids of an escaped text (spaces already '▁', prefix already added)."""
        if not self.segmentable:
            return list(self._encode_word(text))
        out: list[int] = []
        cache = self._cache
        for seg in _SEGMENTS.findall(text):
            if not seg:
                continue
            ids = cache.get(seg)
            if ids is None:
                ids = self._encode_word(seg)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[seg] = ids
            out.extend(ids)
        return out

    def _encode_word(self, word: str) -> tuple[int, ...]:
        piece_id, score = self.piece_id, self.score
        sym = list(word)                       # symbol text; '' once merged into its left neighbour
        n = len(sym)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []

        def add_bigram(left: int, right: int) -> None:
            merged = sym[left] + sym[right]
            tid = piece_id.get(merged)
            if tid is not None:
                # Highest score first, then leftmost (heapq pops the smallest tuple).
                heapq.heappush(heap, (-score[tid], left, right, len(merged)))

        for i in range(n - 1):
            add_bigram(i, i + 1)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            # Stale entry: one side was merged away or grew since the pair was queued.
            if not sym[left] or not sym[right] or len(sym[left]) + len(sym[right]) != size:
                continue
            sym[left] += sym[right]
            sym[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            if prv[left] >= 0:
                add_bigram(prv[left], left)
            if nxt[left] >= 0:
                add_bigram(left, nxt[left])

        out: list[int] = []
        i = 0
        while i != -1:
            tid = piece_id.get(sym[i])
            if tid is not None:
                out.append(tid)
            else:
                out.extend(t for t in (self.byte_ids[b] for b in sym[i].encode("utf-8")) if t is not None)
            i = nxt[i]
        return tuple(out)


def spm_token_bytes(vocab: GGUFVocab) -> list[bytes]:
    """Raw bytes of every token: '▁' -> space, <0xNN> -> that byte, others their UTF-8 text."""
    out = []
    for text, kind in zip(vocab.tokens, vocab.token_types):
        if kind == TokenType.BYTE and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            out.append(bytes([int(text[3:5], 16)]))
        elif kind in (TokenType.NORMAL, TokenType.UNDEFINED):
            out.append(text.replace(SPACE, " ").encode("utf-8"))
        else:
            out.append(text.encode("utf-8"))
    return out
