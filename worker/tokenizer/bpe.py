"""Byte-level BPE from GGUF metadata, run by HF `tokenizers` (the engine); we build it.

    text --Split(regex) per pre-tokenizer pattern--> pieces --ByteLevel--> byte chars --BPE merges--> ids

The vocabulary and merge ranks come from `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`; the
split patterns from `tokenizer.ggml.pre` (pretokenizers.py). Special tokens are not known to this
engine: the GGUF tokenizer cuts them out of the text before any text reaches it.

Speed: tokenizers spends most of its time pre-tokenizing (about 1-2 s per MB on a small CPU).
Text is therefore cut where every supported pre-tokenizer cuts anyway - after an ASCII letter
or digit that is followed by whitespace (no pattern's piece contains a letter/digit followed
by whitespace, and none looks behind) - and each distinct chunk is encoded once and cached.
The ids are exactly those of encoding the whole text in one call.
"""
from __future__ import annotations

import re

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from worker.tokenizer.byte_level import piece_to_bytes
from worker.tokenizer.gguf_vocab import GGUFVocab, TokenType
from worker.tokenizer.pretokenizers import IGNORE_MERGES, family_for, patterns_for

_SAFE_CUT = re.compile(r"(?<=[A-Za-z0-9])(?=[ \t\r\n])")
_CACHE_LIMIT = 200_000


class ByteLevelBPE:
    def __init__(self, vocab: GGUFVocab):
        family = family_for(vocab.pre)
        token_to_id = {text: i for i, text in enumerate(vocab.tokens)}  # later duplicates win, as in llama.cpp
        # tokenizers refuses merges whose parts or result are not tokens; such merges can never
        # produce a token anyway, so leaving them out changes no output for a well-formed vocabulary.
        self.merges = [(a, b) for a, b in vocab.merges
                       if a in token_to_id and b in token_to_id and a + b in token_to_id]
        self.dropped_merges = len(vocab.merges) - len(self.merges)
        engine = Tokenizer(models.BPE(vocab=token_to_id, merges=self.merges,
                                      ignore_merges=family in IGNORE_MERGES))
        engine.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns_for(vocab.pre)]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self.engine = engine
        self.pre_family = family
        self._cache: dict[str, list[int]] = {}

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Ids for each plain-text fragment (no special-token handling here)."""
        chunked = [_SAFE_CUT.split(t) for t in texts]
        cache = self._cache
        missing = list({c for chunks in chunked for c in chunks if c not in cache})
        if missing:
            if len(cache) + len(missing) > _CACHE_LIMIT:
                cache.clear()
            for chunk, enc in zip(missing, self.engine.encode_batch(missing, add_special_tokens=False)):
                cache[chunk] = enc.ids
        out = []
        for chunks in chunked:
            ids: list[int] = []
            for c in chunks:
                ids.extend(cache[c])
            out.append(ids)
        return out

    def encode_whole(self, text: str) -> list[int]:
        """The engine on the whole text in one call (no chunking): what encode_texts must equal."""
        return self.engine.encode(text, add_special_tokens=False).ids


def bpe_token_bytes(vocab: GGUFVocab) -> list[bytes]:
    """Raw bytes of every token: byte-level pieces decoded, special/added tokens as their UTF-8 text."""
    out = []
    for text, kind in zip(vocab.tokens, vocab.token_types):
        if kind in (TokenType.NORMAL, TokenType.UNDEFINED):
            out.append(piece_to_bytes(text))
        else:
            out.append(text.encode("utf-8"))
    return out
