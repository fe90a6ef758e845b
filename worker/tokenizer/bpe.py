"""Byte-level BPE from GGUF metadata, run by HF `tokenizers` (the engine); we build it.

    text --Split(regex) per pre-tokenizer pattern--> pieces --ByteLevel--> byte chars --BPE merges--> ids

The vocabulary and merge ranks come from `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`; the
split patterns from `tokenizer.ggml.pre` (pretokenizers.py). Special tokens are not known to this
engine: the GGUF tokenizer cuts them out of the text before any text reaches it.
"""
from __future__ import annotations

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from worker.tokenizer.byte_level import piece_to_bytes
from worker.tokenizer.gguf_vocab import GGUFVocab, TokenType
from worker.tokenizer.pretokenizers import IGNORE_MERGES, family_for, patterns_for


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

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        """Ids for each plain-text fragment (no special-token handling here)."""
        if len(texts) == 1:
            return [self.engine.encode(texts[0], add_special_tokens=False).ids]
        return [e.ids for e in self.engine.encode_batch(texts, add_special_tokens=False)]


def bpe_token_bytes(vocab: GGUFVocab) -> list[bytes]:
    """Raw bytes of every token: byte-level pieces decoded, special/added tokens as their UTF-8 text."""
    out = []
    for text, kind in zip(vocab.tokens, vocab.token_types):
        if kind in (TokenType.NORMAL, TokenType.UNDEFINED):
            out.append(piece_to_bytes(text))
        else:
            out.append(text.encode("utf-8"))
    return out
