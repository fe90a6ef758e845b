"""What every tokenizer backend offers (docs/CONTRACTS.md, "Tokenizer").

Backends supply the text -> ids step and a table of each token's raw bytes; decoding,
streaming and chat templates are shared here.
"""
from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

from worker.errors import InvalidParamsError
from worker.tokenizer.chat import render_chat
from worker.tokenizer.stream import StreamDecoder

# Token texts that end a generation besides EOS (llama.cpp's end-of-generation list).
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>",
})


class Tokenizer:
    kind: str = "?"               # "bpe" (GGUF byte-level), "spm" (GGUF SentencePiece), "hf" (tokenizer.json)
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    eos_ids: frozenset[int] = frozenset()
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def __init__(self, token_bytes: list[bytes], token_text: list[str], special_ids: Iterable[int]):
        self._bytes = token_bytes          # id -> raw bytes the token stands for
        self._text = token_text            # id -> the vocabulary entry as written
        self._special = frozenset(special_ids)  # left out of decode(skip_special=True)

    # -- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[self._check_id(token_id)]

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry as written in the model file ('Ġhello', '▁hello', '<|im_end|>')."""
        return self._text[self._check_id(token_id)]

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def _check_id(self, token_id) -> int:
        try:
            index = operator.index(token_id)  # int or NumPy integer; not float/str/None
        except TypeError:
            index = None
        if index is None or isinstance(token_id, bool) or not 0 <= index < len(self._bytes):
            raise InvalidParamsError(f"token id {token_id!r} is outside the vocabulary (0..{len(self._bytes) - 1})",
                                     code="INVALID_TOKEN_ID", field="ids")
        return index

    # -- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; BOS/EOS added when add_special and the model's flags say so.

        parse_special: control tokens written in the text (e.g. '<|im_start|>' from a chat
        template) become those tokens; when false they are tokenized as plain text.
        """
        if not isinstance(text, str):
            raise InvalidParamsError("text to tokenize must be a string", code="INVALID_PARAMS", field="prompt")
        _check_encodable(text)
        ids = self._encode_text(text, parse_special)
        if add_special and self.add_bos:
            ids.insert(0, self.bos_id)
        if add_special and self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _encode_text(self, text: str, parse_special: bool) -> list[int]:
        raise NotImplementedError

    def decode_bytes(self, ids: Sequence[int], skip_special: bool = True) -> bytes:
        checked = (self._check_id(i) for i in ids)
        return b"".join(self._bytes[i] for i in checked if not (skip_special and i in self._special))

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`; bytes that do not form UTF-8 characters become U+FFFD."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special: bool = True) -> StreamDecoder:
        """Incremental decoder for generated tokens: push(id) -> whole characters; flush() at the end."""
        skip = (lambda i: i in self._special) if skip_special else (lambda i: False)
        return StreamDecoder(self.token_bytes, skip)

    # -- chat ---------------------------------------------------------------------------------
    def special_token_texts(self) -> dict[str, str]:
        """bos_token / eos_token / ... variables for chat templates (missing ones left out)."""
        out = {}
        for name, tid in (("bos_token", self.bos_id), ("eos_token", self.eos_id),
                          ("unk_token", self.unk_id), ("pad_token", self.pad_id)):
            if tid is not None:
                out[name] = self._text[tid]
        return out

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            template: str | None = None, **kwargs) -> str:
        source = template or self.chat_template
        if not source:
            raise InvalidParamsError("this model has no chat template (tokenizer.chat_template)",
                                     code="NO_CHAT_TEMPLATE", field="messages")
        return render_chat(source, messages, add_generation_prompt=add_generation_prompt,
                           special_tokens=self.special_token_texts(), **kwargs)

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id,
                "eos_ids": sorted(self.eos_ids), "add_bos": self.add_bos, "add_eos": self.add_eos,
                "has_chat_template": bool(self.chat_template)}


def _check_encodable(text: str) -> None:
    """Refuse a lone surrogate (JSON "\\ud83d", or argv bytes that are not UTF-8): it is not a
    character, has no UTF-8 bytes, and the HF engine would fail on it with a bare TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParamsError(
            f"text holds a lone surrogate {text[exc.start]!r} at position {exc.start}: not a Unicode character "
            "(send the surrogate pair of the character, or the character itself)",
            code="INVALID_PARAMS", field="prompt") from None


def end_of_generation_ids(token_text: list[str], eos_id: int | None,
                          extra: Iterable[int | None] = ()) -> frozenset[int]:
    """EOS, EOT/EOM and FIM ids from metadata, plus tokens whose text ends a turn (as llama.cpp)."""
    ids = {i for i in (eos_id, *extra) if i is not None}
    by_text = {t: i for i, t in enumerate(token_text) if t in EOG_TEXTS}
    ids.update(by_text.values())
    # GPT-OSS (o200k_harmony): '<|end|>' closes a message but not the reply when '<|return|>'
    # and '<|call|>' exist; llama.cpp drops it from the set in that case.
    if "<|return|>" in by_text and "<|call|>" in by_text and "<|end|>" in by_text and by_text["<|end|>"] != eos_id:
        ids.discard(by_text["<|end|>"])
    return frozenset(ids)
