"""Tokenizers built from GGUF metadata: byte-level BPE (model 'gpt2') and SentencePiece ('llama').

encode = cut special tokens out of the text (special.py), then run the model's algorithm on each
plain-text fragment: HF tokenizers' BPE for byte-level vocabularies (bpe.py), llama.cpp's
SentencePiece merge loop for 'llama' vocabularies (spm.py).
"""
from __future__ import annotations

from worker.tokenizer.base import Tokenizer, end_of_generation_ids
from worker.tokenizer.bpe import ByteLevelBPE, bpe_token_bytes
from worker.tokenizer.gguf_vocab import GGUFVocab, TokenType
from worker.tokenizer.special import SpecialSplitter, gguf_special_tokens
from worker.tokenizer.spm import SPACE, SentencePieceBPE, spm_token_bytes

# Left out of decode(skip_special=True): llama.cpp prints these only when asked for specials.
_SKIPPED_TYPES = (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.UNUSED)


class GGUFTokenizer(Tokenizer):
    def __init__(self, vocab: GGUFVocab):
        self.vocab = vocab
        if vocab.model == "gpt2":
            self.kind = "bpe"
            self._bpe = ByteLevelBPE(vocab)
            token_bytes = bpe_token_bytes(vocab)
        else:
            self.kind = "spm"
            self._spm = SentencePieceBPE(vocab)
            token_bytes = spm_token_bytes(vocab)
        skipped = [i for i, t in enumerate(vocab.token_types) if t in _SKIPPED_TYPES]
        super().__init__(token_bytes, vocab.tokens, skipped)
        self._splitter = SpecialSplitter(gguf_special_tokens(vocab.tokens, vocab.token_types, vocab.name))
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id
        self.add_bos, self.add_eos = vocab.add_bos, vocab.add_eos
        self.add_space_prefix = vocab.add_space_prefix
        self.chat_template = vocab.chat_template
        self.pre = vocab.pre
        self.eos_ids = end_of_generation_ids(vocab.tokens, vocab.eos_id, [vocab.eot_id, vocab.eom_id, *vocab.fim_ids])

    def _encode_text(self, text: str, parse_special: bool) -> list[int]:
        fragments = self._splitter.split(text, parse_special)
        if self.kind == "bpe":
            return self._encode_bpe(fragments)
        return self._encode_spm(fragments)

    def _encode_bpe(self, fragments) -> list[int]:
        texts = [f for f in fragments if isinstance(f, str)]
        encoded = iter(self._bpe.encode_texts(texts)) if texts else iter(())
        out: list[int] = []
        for f in fragments:
            if isinstance(f, str):
                out.extend(next(encoded))
            else:
                out.append(f)
        return out

    def _encode_spm(self, fragments) -> list[int]:
        out: list[int] = []
        after_special = True  # llama.cpp: a space is prefixed to the first fragment and after specials
        for f in fragments:
            if isinstance(f, int):
                out.append(f)
                after_special = True
                continue
            if self.add_space_prefix and after_special:
                f = " " + f
            out.extend(self._spm.encode(f.replace(" ", SPACE)))
            after_special = False
        return out

    def decode(self, ids, skip_special: bool = True) -> str:
        text = super().decode(ids, skip_special)
        # SentencePiece: the space added in front of the text when encoding is not part of it
        # (HF's Strip decoder; makes decode(encode(s)) == s).
        if self.kind == "spm" and self.add_space_prefix and text.startswith(" "):
            text = text[1:]
        return text
